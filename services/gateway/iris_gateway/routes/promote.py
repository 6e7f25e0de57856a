"""Promotion: move a registered model's `production` alias to another version."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from iris_gateway.auth import TokenRequired, Unauthorized
from iris_gateway.promotion import (
    ModelVersionNotFound,
    ModelVersionNotServable,
    PromotionBusy,
    PromotionUnavailable,
    RegistryError,
)
from iris_gateway.state import StateDep
from iris_gateway.upstream import UpstreamTimeout, UpstreamUnavailable
from iris_shared.http import DocstringRoute, error_responses
from iris_shared.registry import PRODUCTION
from iris_shared.schemas import PromoteRequest, PromoteResponse

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models"], route_class=DocstringRoute)


@router.post(
    "/promote",
    response_model=PromoteResponse,
    responses=error_responses(
        400,
        Unauthorized,
        413,
        415,
        ModelVersionNotFound,
        PromotionBusy,
        ModelVersionNotServable,
        RegistryError,
        UpstreamUnavailable,
        PromotionUnavailable,
        UpstreamTimeout,
    ),
    dependencies=[TokenRequired],
)
async def promote(request: PromoteRequest, state: StateDep) -> PromoteResponse:
    """Serve a model version in production (the predictor follows within seconds)."""
    name = request.model_name or state.settings.default_model_name
    previous = await state.promoter.promote(name, request.model_version)
    logger.info(
        "Model version promoted",
        extra={"model": name, "version": request.model_version, "previous": previous},
    )
    return PromoteResponse(
        model_name=name,
        model_version=request.model_version,
        alias=PRODUCTION,
        previous_version=previous,
    )
