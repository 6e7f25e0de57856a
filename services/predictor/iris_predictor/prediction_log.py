"""The prediction log: one JSON line per answered request, in rotating files that survive restarts.

    {"time": "2026-11-28T09:00:00.123+00:00", "request_id": "...", "trace_id": null,
     "protocol": "native", "model_version": "1",
     "latency_ms": 0.61, "rows": 1, "inputs": {"sepal_length": [5.1], ...},
     "predicted_species": ["Iris-setosa"], "probabilities": {"Iris-setosa": [0.97], ...}}

Columns, not one object per row, so a 10,000-row batch is one line written in one call. Row i
of a batch is named by the request id and i (the batch answer carries the same id).

Each server process writes its own file: two processes cannot rotate one file safely. A
process claims the first free slot of the folder with an exclusive lock that dies with it,
so a restarted worker reuses its predecessor's file: `predictions.jsonl` for slot 0,
`predictions-1.jsonl` for slot 1, ..., each rotated to `.1`, `.2`, ... at `max_bytes`.
"""

from __future__ import annotations

import fcntl
import itertools
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

LOG_FILE = "predictions.jsonl"
LOG_GLOB = "predictions*.jsonl*"


def log_files(directory: Path) -> list[Path]:
    """Every prediction log file in `directory`, rotated ones included."""
    return sorted(directory.glob(LOG_GLOB))


class PredictionLog:
    def __init__(self, directory: Path, max_bytes: int, backup_count: int) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._backup_count = backup_count
        self._slot_lock: IO[str] | None = None
        self._handler: RotatingFileHandler | None = None
        self._size = 0
        self.path: Path | None = None

    def open(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        slot = self._claim_slot()
        self.path = self.directory / (LOG_FILE if slot == 0 else f"predictions-{slot}.jsonl")
        self._handler = RotatingFileHandler(
            self.path,
            mode="a",
            maxBytes=self._max_bytes,
            backupCount=self._backup_count,
            encoding="utf-8",
        )
        self._size = self._handler.stream.tell()
        return self.path

    def _claim_slot(self) -> int:
        for slot in itertools.count():
            lock = (self.directory / f".slot-{slot}.lock").open("w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._slot_lock = lock
            return slot
        raise AssertionError("unreachable")

    def write(self, lines: list[str]) -> None:
        """Append lines (JSON documents without newlines) in one write, rotating first if due."""
        handler = self._handler
        if handler is None or not lines:
            return
        text = "\n".join(lines) + "\n"
        # Not the handler's emit: it checks the file twice and formats the text twice per
        # write. The handler is kept for opening and rotating the files.
        if handler.stream is None:
            handler.stream = handler._open()
            self._size = handler.stream.tell()
        if 0 < self._max_bytes < self._size + len(text) and self._size > 0:
            handler.doRollover()
            self._size = 0
        handler.stream.write(text)
        handler.stream.flush()
        self._size += len(text)  # characters: bytes but for non-ASCII class names

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None
        if self._slot_lock is not None:
            self._slot_lock.close()
            self._slot_lock = None
