"""What the lifespan owns and the routes read, kept on `app.state.gateway`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from iris_gateway.config import GatewaySettings
from iris_gateway.feedback import FeedbackStore
from iris_gateway.jobs import JobStore
from iris_gateway.metrics import GatewayMetrics
from iris_gateway.promotion import Promoter
from iris_gateway.replicas import PredictorReplicas


@dataclass
class GatewayState:
    settings: GatewaySettings
    metrics: GatewayMetrics
    predictor: PredictorReplicas
    promoter: Promoter
    jobs: JobStore
    feedback: FeedbackStore


# async: FastAPI runs a plain `def` dependency in its threadpool, a hop per request.
async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]
