"""Every prediction as one JSON line in a rotating file, written off the request path.

The route only puts a record on a bounded queue (`QueueHandler`); a `QueueListener` thread
writes it through a `RotatingFileHandler`. A full queue drops the line and counts it rather
than slowing requests. The file is opened for appending, so it survives restarts. With
several workers, give each its own PREDICTOR_PREDICTION_LOG_DIR: rotation is per process.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any

from iris_shared.schemas import FEATURE_NAMES

LOG_FILE = "predictions.jsonl"
_RECORD_NAME = "iris_predictor.predictions"


class _DroppingQueueHandler(QueueHandler):
    def __init__(self, records: queue.Queue[Any], on_drop: Callable[[], None]) -> None:
        super().__init__(records)
        self._on_drop = on_drop

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self._on_drop()


class PredictionLog:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        backup_count: int,
        queue_size: int,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = directory / LOG_FILE
        self._max_bytes = max_bytes
        self._backup_count = backup_count
        self._records: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._on_drop = on_drop
        self._listener: QueueListener | None = None
        # Records go straight to this handler, not through a logger: prediction lines never
        # reach the service log, and no logger outlives the app.
        self._handler: QueueHandler | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = RotatingFileHandler(
            self.path,
            mode="a",
            maxBytes=self._max_bytes,
            backupCount=self._backup_count,
            encoding="utf-8",
        )
        file_handler.setFormatter(logging.Formatter("%(message)s"))
        self._listener = QueueListener(self._records, file_handler)
        self._listener.start()
        self._handler = _DroppingQueueHandler(self._records, self._on_drop)

    def stop(self) -> None:
        """Write what is queued, then close the file."""
        self._handler = None
        if self._listener is not None:
            self._listener.stop()
            for handler in self._listener.handlers:
                handler.close()
            self._listener = None

    def record(
        self,
        *,
        request_id: str | None,
        rows: Sequence[Sequence[float]],
        species: Sequence[str],
        probabilities: Sequence[dict[str, float]],
        model_version: str,
        latency_ms: float,
    ) -> None:
        """Queue one line per prediction (a batch gives one line per row, with its index)."""
        handler = self._handler
        if handler is None:
            return
        now = datetime.now(UTC).isoformat()
        batch = len(rows) > 1
        for index, (row, label, probs) in enumerate(zip(rows, species, probabilities, strict=True)):
            line: dict[str, Any] = {
                "time": now,
                "request_id": request_id,
                "inputs": dict(zip(FEATURE_NAMES, row, strict=True)),
                "prediction": label,
                "probabilities": probs,
                "model_version": model_version,
                "latency_ms": round(latency_ms, 3),
            }
            if batch:
                line["batch_index"] = index
            message = json.dumps(line, separators=(",", ":"))
            handler.handle(
                logging.LogRecord(_RECORD_NAME, logging.INFO, __file__, 0, message, None, None)
            )
