"""GET /healthz, GET /readyz and GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from iris_predictor.metrics import CONTENT_TYPE
from iris_predictor.routes import DocstringRoute
from iris_predictor.state import StateDep
from iris_shared.http import error_responses

router = APIRouter(tags=["operations"], route_class=DocstringRoute)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Report that the process is alive (it may still have no model)."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
def readyz(state: StateDep) -> dict[str, str]:
    """Report whether a model is loaded and predictions can be served."""
    served = state.holder.require()
    return {"status": "ready", "model_version": served.version, "source": served.info.source}


@router.get("/metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    """Expose Prometheus metrics."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)
