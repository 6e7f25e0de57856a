"""JSON-lines logging with a request id carried through a context variable."""

from __future__ import annotations

import logging
import os
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = request_id_var.get()
        # uvicorn attaches a copy of each message with terminal colour codes.
        record.__dict__.pop("color_message", None)
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record, ours and our libraries', to stderr as one JSON object a line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(_RequestIdFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's warnings (a library's deprecation, Celery's about running as root) as records.
    logging.captureWarnings(True)
    # MLflow gives its loggers a plain-text handler of its own when it is imported, unless
    # MLFLOW_CONFIGURE_LOGGING says not to: set for an import still to come (and the processes
    # started from here), and the handler is taken off below for one that already happened.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    # uvicorn, Celery and MLflow install their own plain-text handlers; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "mlflow"):
        logger = logging.getLogger(name)
        if not logger.handlers and not logger.propagate:
            # Switched off on purpose (`uvicorn --no-access-log`): keep it off.
            continue
        logger.handlers[:] = []
        logger.propagate = True
    # MLflow also set its level (INFO) itself; the service's level is the one that counts.
    logging.getLogger("mlflow").setLevel(logging.NOTSET)
