"""The model being served: one immutable `LoadedModel` behind one reference that is swapped whole.

A request reads `ModelHolder.current` once and keeps that object until it answers, so a swap in
the middle of a request never mixes two models; the old model is freed when the last request
holding it finishes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from iris_shared.schemas import FEATURE_NAMES, ServedModel


class ModelNotReadyError(Exception):
    """No model has been loaded yet (the alias does not exist, or nothing could be loaded)."""

    def __init__(self, name: str, alias: str) -> None:
        super().__init__(f"No model is served yet: waiting for {name}@{alias} in MLflow.")
        self.name = name
        self.alias = alias


@dataclass(frozen=True)
class Prediction:
    species: str
    probabilities: dict[str, float]


@dataclass(frozen=True)
class LoadedModel:
    """A fitted scikit-learn classifier together with what the registry says about it."""

    model: Any
    info: ServedModel

    @property
    def version(self) -> str:
        return self.info.version

    def with_source(self, source: str) -> LoadedModel:
        return replace(self, info=self.info.model_copy(update={"source": source}))

    def predict(self, rows: Sequence[Sequence[float]]) -> list[Prediction]:
        """Classify rows of the four measurements, in FEATURE_NAMES order (CPU-bound: no loop)."""
        # The pipelines were fitted on a DataFrame: the same column names avoid sklearn's
        # feature-name warning and any chance of a column mix-up.
        frame = pd.DataFrame(list(rows), columns=list(FEATURE_NAMES), dtype="float64")
        if not hasattr(self.model, "predict_proba"):
            return [
                Prediction(str(label), {str(label): 1.0}) for label in self.model.predict(frame)
            ]
        probabilities = np.asarray(self.model.predict_proba(frame), dtype="float64")
        classes = [str(label) for label in self.model.classes_]
        best = probabilities.argmax(axis=1)
        return [
            Prediction(classes[index], dict(zip(classes, row.tolist(), strict=True)))
            for index, row in zip(best, probabilities, strict=True)
        ]


class ModelHolder:
    """Holds the served model; `swap` replaces it in one assignment."""

    def __init__(self, name: str, alias: str, initial: LoadedModel | None = None) -> None:
        self.name = name
        self.alias = alias
        self._current = initial
        # Writers (the watcher, a webhook) are serialised; readers never take the lock.
        self._swap_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReadyError(self.name, self.alias)
        return model

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Serve `new` from now on; returns the model it replaced."""
        with self._swap_lock:
            previous, self._current = self._current, new
        return previous
