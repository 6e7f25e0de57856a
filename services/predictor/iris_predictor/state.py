"""What the lifespan owns and the routes read, kept on `app.state.predictor`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from iris_predictor.config import PredictorSettings
from iris_predictor.core import PredictionCore
from iris_predictor.inference import MicroBatcher
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.recorder import PredictionRecorder
from iris_predictor.serving import ModelHolder
from iris_predictor.watcher import ModelWatcher
from iris_shared.server import WorkerPeers


@dataclass
class PredictorState:
    settings: PredictorSettings
    holder: ModelHolder
    metrics: PredictorMetrics
    batcher: MicroBatcher
    recorder: PredictionRecorder
    # Rows in, answers out, for every protocol's adapter.
    core: PredictionCore
    watcher: ModelWatcher | None
    peers: WorkerPeers
    # Rows of an answer that can take feedback at most (0: answers are not kept).
    feedback_rows: int
    # The challenger, scored in the shadow of the served model (None: shadow scoring is off).
    challenger: ModelHolder | None = None
    challenger_watcher: ModelWatcher | None = None


# async: FastAPI runs a plain `def` dependency in its threadpool, a hop per request.
async def get_state(request: Request) -> PredictorState:
    state: PredictorState = request.app.state.predictor
    return state


StateDep = Annotated[PredictorState, Depends(get_state)]
