"""GET /healthz and GET /readyz (GET /metrics comes with the service stack)."""

from __future__ import annotations

from fastapi import APIRouter

from iris_predictor.serving import ModelNotReady
from iris_predictor.state import StateDep
from iris_shared.http import DocstringRoute, ServiceError, error_responses

router = APIRouter(tags=["operations"], route_class=DocstringRoute)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Report that the process is alive (it may still have no model)."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(ModelNotReady))
async def readyz(state: StateDep) -> dict[str, str]:
    """Report whether a model is loaded and predictions can be served (by every worker)."""
    served = state.holder.require()
    if not state.peers.all_ready():
        raise WorkersNotReady(
            f"{state.peers.ready_count()} of {state.peers.workers} worker processes have a "
            "model so far."
        )
    return {"status": "ready", "model_version": served.version, "source": served.info.source}


class WorkersNotReady(ServiceError):
    """Some worker processes have no model yet."""

    status_code = 503
    error = "model_not_ready"
    retry_after_s = 1
