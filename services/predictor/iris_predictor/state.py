"""What the lifespan owns and the routes read, kept on `app.state.predictor`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from iris_predictor.config import PredictorSettings
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.prediction_log import PredictionLog
from iris_predictor.serving import ModelHolder
from iris_predictor.watcher import ModelWatcher


@dataclass
class PredictorState:
    settings: PredictorSettings
    holder: ModelHolder
    metrics: PredictorMetrics
    prediction_log: PredictionLog
    watcher: ModelWatcher | None


def get_state(request: Request) -> PredictorState:
    state: PredictorState = request.app.state.predictor
    return state


StateDep = Annotated[PredictorState, Depends(get_state)]
