"""Whether the model is still right, worked out once the answers have gone.

The contracts are in iris_shared.monitoring.

All three run on the recorder's thread or their own, never on a request's path:

- `DriftMonitor` keeps the last `drift_window_rows` inputs and, every `drift_interval_s`, scores
  them against the served version's reference profile: `iris_feature_drift_psi{feature}`.
- `PredictionStore` keeps each answered request in Redis for the feedback window, so that the
  gateway's POST /feedback can join a label with what was answered. Bounded twice: by time (the
  keys expire with the window) and by count (beyond `max_stored_predictions` the oldest go).
- `ShadowScorer` scores the same inputs with the `challenger` version through a bounded queue
  of its own: `iris_shadow_predictions_total{model_version,agree}`. A full queue drops shadow
  work and counts it; a live request never waits for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import redis

from iris_predictor.inference import LoadedModel
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.serving import ModelHolder
from iris_shared.monitoring import FeedbackKeys
from iris_shared.schemas import FEATURE_NAMES

logger = logging.getLogger(__name__)

# Scores on fewer rows than this say more about chance than about drift.
_MIN_DRIFT_ROWS = 100

# KEYS: the predictions index. ARGV: seconds to keep them, the key prefix of a prediction, and
# [[request id, time, StoredPrediction JSON], ...] as one JSON document: one argument for any
# number of answers (a command per answer cost the predictor more than the answers did).
_KEEP = """
for _, answer in ipairs(cjson.decode(ARGV[3])) do
  redis.call('SET', ARGV[2] .. answer[1], answer[3], 'EX', ARGV[1])
  redis.call('ZADD', KEYS[1], answer[2], answer[1])
end
"""

# KEYS: the predictions index. ARGV: the most to keep, the key prefix of a prediction, the
# oldest time to keep. Drops the expired from the index, then the oldest beyond the cap.
_TRIM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[1], excess)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[2] .. oldest[i])
  end
end
"""


@dataclass(frozen=True)
class Answered:
    """One answered request, as the monitors see it."""

    time: float
    request_id: str
    model_version: str
    rows: np.ndarray
    predicted: list[int]  # class indices into `classes`, one per row
    classes: tuple[str, ...]


class DriftMonitor:
    def __init__(
        self,
        holder: ModelHolder,
        metrics: PredictorMetrics,
        window_rows: int,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.interval_s = interval_s
        self._clock = clock
        self._window = np.zeros((window_rows, len(FEATURE_NAMES)))
        self._next = 0
        self._filled = 0
        self._due = clock() + interval_s

    def add(self, rows: np.ndarray) -> None:
        size = len(self._window)
        rows = rows[-size:]
        end = self._next + len(rows)
        if end <= size:
            self._window[self._next : end] = rows
        else:
            split = size - self._next
            self._window[self._next :] = rows[:split]
            self._window[: end - size] = rows[split:]
        self._next = end % size
        self._filled = min(self._filled + len(rows), size)
        if self._clock() >= self._due:
            self._due = self._clock() + self.interval_s
            self.score()

    def score(self) -> dict[str, float] | None:
        """Score the window now; None without a profile or with too few rows."""
        model = self.holder.current
        if model is None or model.profile is None or self._filled < _MIN_DRIFT_ROWS:
            return None
        scores = model.profile.psi(self._window[: self._filled])
        for feature, value in scores.items():
            self.metrics.drift_psi.labels(feature).set(value)
        return scores


def stored_json(item: Answered) -> str:
    """`StoredPrediction` as JSON, written by orjson straight from the rows' array: a 1,000-row
    batch costs microseconds instead of a Python object per value."""
    document = {
        "model_version": item.model_version,
        "time": item.time,
        "rows": item.rows,
        "predicted_species": [item.classes[i] for i in item.predicted],
    }
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class PredictionStore:
    # Answers are written in bulk: one round trip for many, and the GIL left to the requests.
    # A label can be joined at most this long after its answer.
    FLUSH_ANSWERS = 512
    FLUSH_INTERVAL_S = 0.2
    # The count bound is enforced about once a second (it may be exceeded by a second's worth).
    TRIM_INTERVAL_S = 1.0

    def __init__(
        self,
        client: redis.Redis,
        keys: FeedbackKeys,
        metrics: PredictorMetrics,
        window_s: int,
        max_predictions: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.window_s = window_s
        self.max_predictions = max_predictions
        self._keep = client.register_script(_KEEP)
        self._trim = client.register_script(_TRIM)
        self._failing = False
        self._pending: list[Answered] = []
        self._flushed = self._trimmed = time.monotonic()

    def keep(self, answered: Sequence[Answered]) -> None:
        """Keep answers; they are written in bulk, every `FLUSH_ANSWERS` or `FLUSH_INTERVAL_S`."""
        self._pending.extend(answered)
        now = time.monotonic()
        if len(self._pending) >= self.FLUSH_ANSWERS or now - self._flushed >= self.FLUSH_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._flushed = time.monotonic()
        if not pending:
            return
        try:
            answers = [[item.request_id, item.time, stored_json(item)] for item in pending]
            self._keep(
                keys=[self.keys.predictions_index],
                args=[self.window_s, self.keys.prediction_prefix, orjson.dumps(answers)],
            )
            if self._flushed - self._trimmed >= self.TRIM_INTERVAL_S:
                self._trimmed = self._flushed
                self._trim(
                    keys=[self.keys.predictions_index],
                    args=[
                        self.max_predictions,
                        self.keys.prediction_prefix,
                        time.time() - self.window_s,
                    ],
                )
        except redis.RedisError as exc:
            self.metrics.prediction_store_failures.inc(len(pending))
            if not self._failing:
                logger.warning(
                    "Unable to keep predictions for feedback", extra={"reason": str(exc)}
                )
            self._failing = True
            return
        if self._failing:
            logger.info("Keeping predictions for feedback again")
        self._failing = False

    def count_shadow(self, challenger_version: str, agree: int, disagree: int) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                key = self.keys.shadow_counts(challenger_version)
                pipe.hincrby(key, "agree", agree)
                pipe.hincrby(key, "disagree", disagree)
                pipe.expire(key, self.window_s)
                pipe.execute()
        except redis.RedisError:
            # The Prometheus counters have it; the CLI's summary misses this batch.
            logger.debug("Unable to count shadow agreement in Redis", exc_info=True)


class ShadowScorer:
    def __init__(
        self,
        challenger: ModelHolder,
        metrics: PredictorMetrics,
        queue_size: int,
        store: PredictionStore | None,
    ) -> None:
        self.challenger = challenger
        self.metrics = metrics
        self.store = store
        self._queue: queue.Queue[list[Answered] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, answered: list[Answered]) -> None:
        if self.challenger.current is None:
            return
        try:
            self._queue.put_nowait(answered)
        except queue.Full:
            self.metrics.shadow_dropped.inc(len(answered))

    def _run(self) -> None:
        while (answered := self._queue.get()) is not None:
            try:
                self.score(answered)
            except Exception:
                logger.exception("Shadow scoring failed")

    def score(self, answered: list[Answered]) -> tuple[int, int] | None:
        """Score with the challenger; the counts of rows it agreed and disagreed on."""
        challenger = self.challenger.current
        # Comparing a version with itself says nothing.
        shadowed = [a for a in answered if challenger and a.model_version != challenger.version]
        if challenger is None or not shadowed:
            return None
        rows = np.concatenate([a.rows for a in shadowed])
        started = time.perf_counter()
        labels = _labels(challenger, challenger.predict_proba(rows).argmax(axis=1))
        self.metrics.shadow_seconds.observe(time.perf_counter() - started)
        served = np.concatenate([np.asarray(a.classes)[a.predicted] for a in shadowed])
        agree = int(np.count_nonzero(labels == served))
        disagree = len(rows) - agree
        version = challenger.version
        if agree:
            self.metrics.shadow_predictions.labels(version, "true").inc(agree)
        if disagree:
            self.metrics.shadow_predictions.labels(version, "false").inc(disagree)
        if self.store is not None:
            self.store.count_shadow(version, agree, disagree)
        return agree, disagree


def _labels(model: LoadedModel, indices: np.ndarray) -> np.ndarray:
    return np.asarray(model.classes)[indices]
