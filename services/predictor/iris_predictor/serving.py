"""The model being served: one immutable `LoadedModel` behind one reference that is swapped whole.

A request reads `ModelHolder.current` once and keeps that object until it answers, so a swap in
the middle of a request never mixes two models; the old model is freed when the last request
holding it finishes.
"""

from __future__ import annotations

import threading

from iris_predictor.inference import LoadedModel
from iris_shared.http import ServiceError
from iris_shared.schemas import LoadFailure, ServedModel


class ModelNotReady(ServiceError):
    """No model has been loaded yet (the alias does not exist, or nothing could be loaded)."""

    status_code = 503
    error = "model_not_ready"
    retry_after_s = 5

    def __init__(self, name: str, alias: str) -> None:
        super().__init__(f"No model is served yet: waiting for {name}@{alias} in MLflow.")


class ModelHolder:
    """Holds the served model; `swap` replaces it in one assignment."""

    def __init__(self, name: str, alias: str, initial: LoadedModel | None = None) -> None:
        self.name = name
        self.alias = alias
        self._current = initial
        # Set by the watcher while the alias points at a version that fails to load.
        self.load_failure: LoadFailure | None = None
        # Writers (the watcher, a webhook) are serialised; readers never take the lock.
        self._swap_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady(self.name, self.alias)
        return model

    def describe(self, challenger: ModelHolder | None = None) -> ServedModel:
        """What GET /model says: the served model, a failing newer version if any, and the
        challenger scoring in its shadow."""
        served = self.require()
        shadow = challenger.current if challenger is not None else None
        return served.info.model_copy(
            update={
                "load_error": self.load_failure,
                "challenger": _with_scorer(shadow) if shadow is not None else None,
                "scorer": served.scorer_name,
                "scorer_mismatch": served.fast_path.mismatch,
            }
        )

    def swap(self, new: LoadedModel | None) -> LoadedModel | None:
        """Serve `new` from now on (None: nothing); returns the model it replaced."""
        with self._swap_lock:
            previous, self._current = self._current, new
        return previous


def _with_scorer(model: LoadedModel) -> ServedModel:
    return model.info.model_copy(
        update={"scorer": model.scorer_name, "scorer_mismatch": model.fast_path.mismatch}
    )
