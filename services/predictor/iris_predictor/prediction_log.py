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
`predictions-1.jsonl` for slot 1, ..., each rotated to `.1`, `.2`, ... at `max_bytes`, the way
`logging.handlers.RotatingFileHandler` names and rotates its files (its tests hold this writer
to that). The writer is not the handler: lines arrive already encoded, many per write, and the
handler would decode, check the file and format each of them again.

Unlike the handler, a rotation does not wait for the oldest file to go: unlinking a 50 MiB file
took ext4 (mounted with online discard) up to 100 ms here, in which the recorder wrote nothing
and answers piled up towards the backlog limit. The oldest file is renamed out of the log's
names (`.predictions.jsonl.5.expired-<n>`, at once) and unlinked by a thread of its own;
`close()` waits for it, and `open()` removes what a predecessor in the slot left behind.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from iris_shared.life_locks import first_free

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
        self._slot_lock: int | None = None
        self._stream: IO[bytes] | None = None
        self._size = 0
        self.path: Path | None = None
        self._expiry: ThreadPoolExecutor | None = None
        self._expired = itertools.count()

    def open(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        slot = self._claim_slot()
        self.path = self.directory / (LOG_FILE if slot == 0 else f"predictions-{slot}.jsonl")
        self._expiry = ThreadPoolExecutor(1, thread_name_prefix="prediction-log-expiry")
        # Left by a predecessor in this slot that died before unlinking them.
        for leftover in self.directory.glob(f".{self.path.name}.*.expired-*"):
            self._expiry.submit(_remove, leftover)
        self._open_stream()
        return self.path

    def _claim_slot(self) -> int:
        lock_paths = (self.directory / f".slot-{slot}.lock" for slot in itertools.count())
        claimed = first_free(lock_paths)
        assert claimed is not None  # the paths never end
        self._slot_lock, slot = claimed
        return slot

    def _open_stream(self) -> None:
        assert self.path is not None
        self._stream = self.path.open("ab")
        self._size = self._stream.tell()

    def write(self, lines: list[bytes]) -> None:
        """Append lines (JSON documents, each ending with its newline) together, rotating
        first if due."""
        if self._stream is None or not lines:
            return
        size = sum(map(len, lines))
        # As RotatingFileHandler: no rotation without backups to rotate into, and none of an
        # empty file (a single write larger than max_bytes goes into a file of its own).
        if self._backup_count > 0 and 0 < self._max_bytes <= self._size + size and self._size > 0:
            self._rotate()
        stream = self._stream
        assert stream is not None
        stream.writelines(lines)
        stream.flush()
        self._size += size

    def _rotate(self) -> None:
        """predictions.jsonl -> .1 -> .2 ... up to the backup count, the oldest dropped."""
        assert self._stream is not None
        assert self.path is not None
        self._stream.close()
        oldest = self.path.with_name(f"{self.path.name}.{self._backup_count}")
        if oldest.exists() and self._expiry is not None:
            expired = oldest.with_name(f".{oldest.name}.expired-{next(self._expired)}")
            os.replace(oldest, expired)
            self._expiry.submit(_remove, expired)
        for index in range(self._backup_count - 1, 0, -1):
            source = self.path.with_name(f"{self.path.name}.{index}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open_stream()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._expiry is not None:
            self._expiry.shutdown(wait=True)
            self._expiry = None
        if self._slot_lock is not None:
            os.close(self._slot_lock)
            self._slot_lock = None


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
