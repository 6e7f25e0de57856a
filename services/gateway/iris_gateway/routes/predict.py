"""Predictions, proxied to the predictor unchanged (status code, body and content type).

The body is passed through as bytes rather than parsed here, so a client gets exactly the
predictor's answer, validation errors included, and the gateway spends no time on JSON.
OpenAPI still documents the requests with the shared schemas (`json_body`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from iris_gateway.state import GatewayState
from iris_gateway.upstream import UpstreamResponse
from iris_shared.http import RawRoute, error_responses, json_body
from iris_shared.schemas import (
    BatchPredictionRequest,
    BatchPredictionResponse,
    PredictionRequest,
    PredictionResponse,
    ServedModel,
)

router = APIRouter(tags=["predictions"], route_class=RawRoute)

JSON_BODIES = (PredictionRequest, BatchPredictionRequest)
UPSTREAM_ERRORS = (502, 503, 504)


def _response(state: GatewayState, upstream: UpstreamResponse) -> Response:
    if upstream.status_code >= 500:
        state.metrics.upstream_error("predictor", "status_5xx")
    return Response(
        content=upstream.content, status_code=upstream.status_code, headers=upstream.headers
    )


async def _forward(request: Request, path: str) -> Response:
    state: GatewayState = request.app.state.gateway
    headers = {"Content-Type": request.headers.get("content-type", "application/json")}
    upstream = await state.predictor.request(
        "POST", path, body=await request.body(), headers=headers
    )
    return _response(state, upstream)


@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=error_responses(400, 413, 415, *UPSTREAM_ERRORS),
    openapi_extra=json_body(PredictionRequest),
)
async def predict(request: Request) -> Response:
    """Predict the species of one flower."""
    return await _forward(request, "/predict")


@router.post(
    "/predict/batch",
    response_model=BatchPredictionResponse,
    responses=error_responses(400, 413, 415, *UPSTREAM_ERRORS),
    openapi_extra=json_body(BatchPredictionRequest),
)
async def predict_batch(request: Request) -> Response:
    """Predict the species of several flowers at once."""
    return await _forward(request, "/predict/batch")


@router.get("/model", response_model=ServedModel, responses=error_responses(*UPSTREAM_ERRORS))
async def served_model(request: Request) -> Response:
    """Describe the model the predictor is serving."""
    state: GatewayState = request.app.state.gateway
    return _response(state, await state.predictor.request("GET", "/model"))
