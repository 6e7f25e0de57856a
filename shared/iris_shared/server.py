"""Serve a service's app with uvicorn: one process per core, metrics merged across them.

Each service's `python -m <package>` calls `run()` with its app factory and settings:

    python -m iris_predictor        # PREDICTOR_HOST, PREDICTOR_PORT, PREDICTOR_WORKERS, ...
    python -m iris_gateway          # GATEWAY_...

With more than one worker, uvicorn's supervisor starts the workers, restarts one that dies and
forwards SIGTERM for a graceful stop. The workers of one server then share a runtime folder,
made empty here before any of them starts:

    <runtime>/metrics/   prometheus_client's files (PROMETHEUS_MULTIPROC_DIR), merged on every
                         scrape by `iris_shared.metrics`
    <runtime>/ready/     one file per worker that is ready, so readiness speaks for all of them
    <runtime>/nudge      touched to make every worker do now what it would do at its next tick
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from iris_shared.http_protocol import (
    HEADER_TIMEOUT_ENV,
    MAX_HEADER_BYTES_ENV,
    GuardedHttpToolsProtocol,
)
from iris_shared.logging import configure_logging
from iris_shared.settings import HTTPServiceSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUNTIME_ENV = "IRIS_SERVER_RUNTIME_DIR"


def prepare_runtime_dir(service: str) -> Path:
    """A new, empty runtime folder for this server, removed when it exits."""
    folder = Path(tempfile.mkdtemp(prefix=f"iris-{service}-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "metrics").mkdir()
    (folder / "ready").mkdir()
    os.environ[RUNTIME_ENV] = str(folder)
    os.environ[MULTIPROC_ENV] = str(folder / "metrics")
    return folder


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerPeers:
    """What the worker processes of one server tell each other through the runtime folder.

    In a server of one process (no runtime folder) each question is about that process alone.
    """

    def __init__(self, workers: int) -> None:
        value = os.environ.get(RUNTIME_ENV)
        self.folder = Path(value) if value and workers > 1 else None
        self.workers = workers
        self._seen_nudge = self._nudge_stamp()

    def mark_ready(self) -> None:
        if self.folder is not None:
            (self.folder / "ready" / str(os.getpid())).touch()

    def ready_count(self) -> int:
        """Live workers that said they are ready (1 in a single-process server)."""
        if self.folder is None:
            return 1
        return sum(
            1 for entry in (self.folder / "ready").iterdir() if process_alive(int(entry.name))
        )

    def all_ready(self) -> bool:
        return self.ready_count() >= (self.workers if self.folder is not None else 1)

    def nudge(self) -> None:
        if self.folder is not None:
            (self.folder / "nudge").touch()

    def nudged(self) -> bool:
        """Whether a worker nudged the others since the last call (this one's own nudge too)."""
        stamp = self._nudge_stamp()
        if stamp == self._seen_nudge:
            return False
        self._seen_nudge = stamp
        return True

    def _nudge_stamp(self) -> int:
        if self.folder is None:
            return 0
        try:
            return (self.folder / "nudge").stat().st_mtime_ns
        except FileNotFoundError:
            return 0


def freeze_long_lived_objects() -> None:
    """Take what exists now (modules, the app, a loaded model) out of the collector's sight.

    A full garbage collection walks every tracked object; with MLflow, pandas and scikit-learn
    imported that is over 250,000 objects and about 300 ms in which the process answers
    nothing, which under load was the slowest 1% of predictions. Objects alive once a service
    is up live as long as the process, so they are collected once and frozen (`gc.freeze`):
    later full collections walk only what was made since.
    """
    gc.collect()
    gc.freeze()


def run(service: str, factory: str, settings: HTTPServiceSettings) -> None:
    """Serve `factory` ("module:function" returning the ASGI app) until SIGTERM or SIGINT."""
    configure_logging(service, settings.log_level)
    # Read by each worker's protocol objects (GuardedHttpToolsProtocol), wherever it runs.
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_read_timeout_s)
    os.environ[MAX_HEADER_BYTES_ENV] = str(settings.max_header_bytes)
    if settings.workers > 1:
        # Before uvicorn spawns the workers: each reads the variables when it imports
        # prometheus_client.
        prepare_runtime_dir(service)
    uvicorn.run(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        # Logging is ours (JSON lines, set up by the factory); no access log on the hot path.
        log_config=None,
        access_log=False,
        # No proxy in front that sets X-Forwarded-*; the middleware costs a few % per request.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
