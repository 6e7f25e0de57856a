"""What happens after an answer is sent: the prediction log, the per-row metrics, and the
monitors that tell whether the model is still right (iris_predictor.monitoring), and the
answers kept for feedback (iris_predictor.feedback).

A request only puts one `PredictionRecord` on a bounded queue; one thread takes what has
accumulated, observes all of its rows in the feature histograms at once and writes one log line
per request in one write. Under load, one pass handles many requests, so the cost per request
shrinks as the load grows. A full queue drops the record and counts it (an alert watches the
counter) rather than slowing requests down; `stop()` writes everything queued before it
returns, so a graceful shutdown loses nothing.

Answers may not outrun the log for long: while more than `max_backlog_rows` rows wait to be
recorded, new requests wait for room (`room()`). Without it, batches answered faster than they
can be logged would hold their rows in memory until the queue is full, then be dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from iris_predictor.feedback import Answered, PredictionStore
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.monitoring import DriftMonitor, ShadowScorer
from iris_predictor.prediction_log import PredictionLog
from iris_shared.schemas import FEATURE_NAMES

logger = logging.getLogger(__name__)

# Records and rows taken per pass: bound the memory of one pass (its log text, its columns)
# and the latency of the log. One-row requests fill a pass by records, batches by rows.
_PASS_RECORDS = 1024
_PASS_ROWS = 16_384
# How long the thread waits for answers before it flushes what it holds.
_IDLE_FLUSH_S = 0.2
# How long a pass waits for more answers once one came: a pass costs tens of microseconds
# whatever its size (and waking this thread more), so records trickling in one by one cost
# twice what records taken together do.
_LINGER_S = 0.005
# How often a request held back by the backlog looks again.
_ROOM_POLL_S = 0.002


# Each line ends with its newline as orjson writes it: the log need not copy the lines to join.
_LOG_LINE_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


@dataclass(frozen=True)
class PredictionRecord:
    time: float
    # The answer's id (the server's); the client's X-Request-ID, if it sent one, traces it.
    request_id: str
    trace_id: str | None
    model_version: str
    latency_ms: float
    rows: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]
    # How the request came in: "native", "v2" or "mlflow" (iris_predictor.core).
    protocol: str = "native"


class Pass:
    """The records of one pass, column by column: numpy works on all their rows at once, and
    each record's share of a column is a slice. One-row requests slice plain Python lists (a
    list slice costs less than a numpy view); batches slice contiguous numpy columns, which
    orjson writes without a Python object per value."""

    def __init__(self, records: list[PredictionRecord]) -> None:
        self.records = records
        single = len(records) == 1
        self.rows = records[0].rows if single else np.concatenate([r.rows for r in records])
        self.bounds = [0]
        for record in records:
            self.bounds.append(self.bounds[-1] + len(record.rows))
        as_lists = len(self.rows) <= 2 * len(records)
        # Models of one pass have the same classes unless a swap changed them mid-pass.
        self.same_classes = all(r.classes == records[0].classes for r in records)
        if self.same_classes:
            probabilities = (
                records[0].probabilities
                if single
                else np.concatenate([r.probabilities for r in records])
            )
            self.predicted = probabilities.argmax(axis=1).tolist()
            self._probability_columns = _columns(probabilities, as_lists)
        else:
            self.predicted = [i for r in records for i in r.probabilities.argmax(axis=1).tolist()]
        self._input_columns = _columns(self.rows, as_lists)

    def log_lines(self) -> list[bytes]:
        lines = []
        for k, record in enumerate(self.records):
            start, end = self.bounds[k], self.bounds[k + 1]
            classes = record.classes
            if self.same_classes:
                probabilities = {
                    name: column[start:end]
                    for name, column in zip(classes, self._probability_columns, strict=True)
                }
            else:
                probabilities = dict(zip(classes, record.probabilities.T.tolist(), strict=True))
            document = {
                "time": datetime.fromtimestamp(record.time, UTC).isoformat(timespec="milliseconds"),
                "request_id": record.request_id,
                "trace_id": record.trace_id,
                "protocol": record.protocol,
                "model_version": record.model_version,
                "latency_ms": round(record.latency_ms, 3),
                "rows": end - start,
                "inputs": {
                    name: column[start:end]
                    for name, column in zip(FEATURE_NAMES, self._input_columns, strict=True)
                },
                "predicted_species": [classes[i] for i in self.predicted[start:end]],
                "probabilities": probabilities,
            }
            lines.append(orjson.dumps(document, option=_LOG_LINE_OPTIONS))
        return lines

    def answered(self) -> list[Answered]:
        answered = []
        for k, record in enumerate(self.records):
            start, end = self.bounds[k], self.bounds[k + 1]
            answered.append(
                Answered(
                    time=record.time,
                    request_id=record.request_id,
                    model_version=record.model_version,
                    rows=self.rows[start:end],
                    predicted=self.predicted[start:end],
                    classes=record.classes,
                )
            )
        return answered


def _columns(values: np.ndarray, as_lists: bool) -> Any:
    columns = np.ascontiguousarray(values.T)
    return columns.tolist() if as_lists else columns


@dataclass(frozen=True)
class Monitors:
    """What watches the answers besides the log; each is optional."""

    drift: DriftMonitor | None = None
    store: PredictionStore | None = None
    shadow: ShadowScorer | None = None


class PredictionRecorder:
    def __init__(
        self,
        log: PredictionLog,
        metrics: PredictorMetrics,
        queue_size: int,
        monitors: Monitors | None = None,
        max_backlog_rows: int = 100_000,
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.monitors = monitors or Monitors()
        self.max_backlog_rows = max_backlog_rows
        self._records: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        # Rows handed over (by the event loop) and rows recorded (by the thread): each is
        # written by one thread only, so their difference needs no lock.
        self._rows_in = 0
        self._rows_out = 0

    @property
    def backlog_rows(self) -> int:
        """Rows answered but not recorded yet."""
        return self._rows_in - self._rows_out

    async def room(self) -> None:
        """Return once the backlog is within `max_backlog_rows` (at once, nearly always)."""
        if self._rows_in - self._rows_out <= self.max_backlog_rows:
            return
        self.metrics.prediction_log_waits.inc()
        while (
            self._rows_in - self._rows_out > self.max_backlog_rows
            and self._thread is not None
            and self._thread.is_alive()
        ):
            await asyncio.sleep(_ROOM_POLL_S)

    def start(self) -> None:
        self.log.open()
        if self.monitors.shadow is not None:
            self.monitors.shadow.start()
        self._thread = threading.Thread(target=self._run, name="prediction-recorder", daemon=True)
        self._thread.start()

    def record(self, record: PredictionRecord) -> None:
        try:
            self._records.put_nowait(record)
        except queue.Full:
            self.metrics.prediction_log_dropped.inc()
            return
        self._rows_in += len(record.rows)

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then close the log."""
        if self._thread is not None:
            # Blocking put: the stop marker must not be dropped, and it goes after every record.
            self._records.put(None)
            self._thread.join(timeout)
            self._thread = None
        self.log.close()
        if self.monitors.store is not None:
            self.monitors.store.flush()
        if self.monitors.shadow is not None:
            self.monitors.shadow.stop()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                # Not forever: answers waiting to be kept for feedback go out when traffic stops.
                batch = [self._records.get(timeout=_IDLE_FLUSH_S)]
            except queue.Empty:
                if self.monitors.store is not None:
                    self.monitors.store.flush()
                continue
            # Only when nothing else waits: a thread behind its queue must not sleep.
            if batch[0] is not None and self._records.empty():
                time.sleep(_LINGER_S)
            rows = 0 if batch[0] is None else len(batch[0].rows)
            while len(batch) < _PASS_RECORDS and rows < _PASS_ROWS:
                try:
                    record = self._records.get_nowait()
                except queue.Empty:
                    break
                batch.append(record)
                if record is not None:
                    rows += len(record.rows)
            stopping = None in batch
            records = [r for r in batch if r is not None]
            if not records:
                continue
            try:
                self._handle(records)
            except Exception:
                # The thread must outlive any surprise, or nothing is recorded from then on.
                logger.exception("Unable to record predictions", extra={"count": len(records)})
            finally:
                self._rows_out += sum(len(record.rows) for record in records)

    def _handle(self, records: list[PredictionRecord]) -> None:
        answers = Pass(records)
        self.metrics.observe_features(answers.rows)
        self.metrics.count_requests(records)
        self.log.write(answers.log_lines())
        monitors = self.monitors
        if monitors.drift is not None:
            monitors.drift.add(answers.rows)
        if monitors.store is None and monitors.shadow is None:
            return
        answered = answers.answered()
        if monitors.store is not None:
            monitors.store.keep(answered)
        if monitors.shadow is not None:
            monitors.shadow.submit(answered)
