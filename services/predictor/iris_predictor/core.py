"""The prediction core: rows in, an answer out, whatever protocol the rows came in by.

It knows no HTTP. A protocol adapter (`iris_predictor.protocols`) decodes a body into an
(n, 4) array of checked measurements (`iris_predictor.inputs`), asks `PredictionCore.predict`,
and encodes the `Answer`. Everything that happens after the answer (the prediction log, the
kept answers for feedback, shadow scoring, drift and per-row metrics) is the recorder's, on its
own thread, with the protocol the request used.

A model with a numpy scorer is scored here on the event loop, at once: its call costs less
than the hand-off to a thread. Any other goes through the micro-batcher, with the rows of
concurrent requests for the same model.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Final

import numpy as np

from iris_predictor.inference import LoadedModel, MicroBatcher
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.recorder import PredictionRecord, PredictionRecorder
from iris_predictor.serving import ModelHolder

# The `protocol` of the log lines and of iris_prediction_requests_total.
NATIVE: Final = "native"
OPEN_INFERENCE: Final = "v2"
MLFLOW: Final = "mlflow"
PROTOCOLS: Final = (NATIVE, OPEN_INFERENCE, MLFLOW)


@dataclass(frozen=True)
class Answer:
    """What the model answered for the rows of one request."""

    probabilities: np.ndarray  # (n, classes), rows in input order
    classes: tuple[str, ...]
    model_version: str
    # The server's id of the answer: the key feedback is given under, never the client's.
    request_id: str

    @functools.cached_property
    def predicted(self) -> np.ndarray:
        """The index into `classes` of each row's species."""
        indices: np.ndarray = self.probabilities.argmax(axis=1)
        return indices

    def labels(self) -> list[str]:
        classes = self.classes
        return [classes[i] for i in self.predicted.tolist()]


class PredictionCore:
    def __init__(
        self,
        holder: ModelHolder,
        batcher: MicroBatcher,
        recorder: PredictionRecorder,
        metrics: PredictorMetrics,
        challenger: ModelHolder | None = None,
    ) -> None:
        self.holder = holder
        self.batcher = batcher
        self.recorder = recorder
        self.metrics = metrics
        self.challenger = challenger

    def served(self) -> LoadedModel:
        """The model answering now (ModelNotReady, a 503, before the first load)."""
        return self.holder.require()

    def by_version(self) -> dict[str, LoadedModel]:
        """The models served under an alias, by version: production's and the challenger's."""
        models = {}
        if self.challenger is not None and self.challenger.current is not None:
            models[self.challenger.current.version] = self.challenger.current
        production = self.holder.current
        if production is not None:
            models[production.version] = production
        return models

    async def predict(
        self,
        rows: np.ndarray,
        *,
        request_id: str,
        trace_id: str | None,
        protocol: str,
        model: LoadedModel | None = None,
    ) -> Answer:
        """Score `rows` ((n, 4), FEATURE_NAMES order, checked) with `model` (by default the one
        served now, read once: a swap during the request does not change it), and have the
        answer recorded."""
        await self.recorder.room()
        served = model if model is not None else self.holder.require()
        started = time.perf_counter()
        fast = served.fast_path.scorer
        if fast is not None:
            self.metrics.model_called(1)
            probabilities = fast(rows)
        else:
            probabilities = await self.batcher.score(served.batch_scorer, rows)
        latency_ms = (time.perf_counter() - started) * 1000
        classes = served.classes
        self.metrics.count_predictions(probabilities, classes, served.version)
        self.recorder.record(
            PredictionRecord(
                time=time.time(),
                request_id=request_id,
                trace_id=trace_id,
                model_version=served.version,
                latency_ms=latency_ms,
                rows=rows,
                probabilities=probabilities,
                classes=classes,
                protocol=protocol,
            )
        )
        return Answer(probabilities, classes, served.version, request_id)
