"""What happens after an answer is sent: the prediction log, the per-row metrics, and the
monitors that tell whether the model is still right (iris_predictor.monitoring).

A request only puts one `PredictionRecord` on a bounded queue; one thread takes what has
accumulated, observes all of its rows in the feature histograms at once and writes one log line
per request in one write. Under load, one pass handles many requests, so the cost per request
shrinks as the load grows. A full queue drops the record and counts it (an alert watches the
counter) rather than slowing requests down; `stop()` writes everything queued before it
returns, so a graceful shutdown loses nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson

from iris_predictor.metrics import PredictorMetrics
from iris_predictor.monitoring import Answered, DriftMonitor, PredictionStore, ShadowScorer
from iris_predictor.prediction_log import PredictionLog
from iris_shared.schemas import FEATURE_NAMES

logger = logging.getLogger(__name__)

# Records taken per pass: bounds the memory of one pass and the latency of the log.
_PASS_RECORDS = 1024
# How long the thread waits for answers before it flushes what it holds.
_IDLE_FLUSH_S = 0.2


@dataclass(frozen=True)
class PredictionRecord:
    time: float
    request_id: str
    model_version: str
    latency_ms: float
    rows: np.ndarray
    probabilities: np.ndarray
    classes: tuple[str, ...]

    def log_line(self) -> str:
        inputs = self.rows.T.copy()  # one contiguous array per feature, as orjson wants
        probabilities = self.probabilities.T.copy()
        document = {
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "model_version": self.model_version,
            "latency_ms": round(self.latency_ms, 3),
            "rows": len(self.rows),
            "inputs": dict(zip(FEATURE_NAMES, inputs, strict=True)),
            "predicted_species": [self.classes[i] for i in self.probabilities.argmax(axis=1)],
            "probabilities": dict(zip(self.classes, probabilities, strict=True)),
        }
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def answered(self) -> Answered:
        return Answered(
            time=self.time,
            request_id=self.request_id,
            model_version=self.model_version,
            rows=self.rows,
            predicted=self.probabilities.argmax(axis=1),
            classes=self.classes,
        )


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
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.monitors = monitors or Monitors()
        self._records: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

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
            while len(batch) < _PASS_RECORDS:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            stopping = None in batch
            records = [r for r in batch if r is not None]
            if not records:
                continue
            try:
                self._handle(records)
            except Exception:
                # The thread must outlive any surprise, or nothing is recorded from then on.
                logger.exception("Unable to record predictions", extra={"count": len(records)})

    def _handle(self, records: list[PredictionRecord]) -> None:
        rows = records[0].rows if len(records) == 1 else np.concatenate([r.rows for r in records])
        self.metrics.observe_features(rows)
        self.log.write([record.log_line() for record in records])
        monitors = self.monitors
        if monitors.drift is not None:
            monitors.drift.add(rows)
        if monitors.store is None and monitors.shadow is None:
            return
        answered = [record.answered() for record in records]
        if monitors.store is not None:
            monitors.store.keep(answered)
        if monitors.shadow is not None:
            monitors.shadow.submit(answered)
