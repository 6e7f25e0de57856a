"""Whether the model is still right, worked out once the answers have gone.

Both run on the recorder's thread or their own, never on a request's path:

- `DriftMonitor` keeps the last `drift_window_rows` inputs and, every `drift_interval_s`, scores
  them against the served version's reference profile: `iris_feature_drift_psi{feature}`.
- `ShadowScorer` scores the same inputs with the `challenger` version through a bounded queue
  of its own: `iris_shadow_predictions_total{model_version,agree}`, its counts kept beside the
  answers (`iris_predictor.feedback`). A full queue drops shadow work and counts it; a live
  request never waits for it.

Live accuracy, the third question, is the feedback's: `iris_predictor.feedback` keeps the
answers, the gateway joins labels with them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from iris_predictor.feedback import Answered, PredictionStore
from iris_predictor.inference import LoadedModel
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.serving import ModelHolder
from iris_shared.schemas import FEATURE_NAMES

logger = logging.getLogger(__name__)

# Scores on fewer rows than this say more about chance than about drift.
_MIN_DRIFT_ROWS = 100


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
    labels: np.ndarray = np.asarray(model.classes)[indices]
    return labels
