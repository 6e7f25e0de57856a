"""GET /model."""

from __future__ import annotations

from fastapi import APIRouter

from iris_predictor.serving import ModelNotReady
from iris_predictor.state import StateDep
from iris_shared.http import DocstringRoute, error_responses
from iris_shared.schemas import ServedModel

router = APIRouter(tags=["model"], route_class=DocstringRoute)


@router.get("/model", response_model=ServedModel, responses=error_responses(ModelNotReady))
async def served_model(state: StateDep) -> ServedModel:
    """Describe the model being served (name, version, alias, run, metrics, source, load error)
    and the challenger scoring in its shadow."""
    return state.holder.describe(state.challenger)
