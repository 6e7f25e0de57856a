"""Predictions, proxied to the predictor unchanged (status code and body).

The body is passed through raw rather than parsed here, so a client gets exactly the
predictor's answer, validation errors included. OpenAPI still documents the request with the
shared schemas (see `passthrough_body`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from iris_gateway.dependencies import MetricsDep, PredictorDep
from iris_gateway.metrics import GatewayMetrics
from iris_gateway.upstream import UpstreamResponse
from iris_shared.http import error_responses
from iris_shared.schemas import (
    BatchPredictionRequest,
    BatchPredictionResponse,
    PredictionRequest,
    PredictionResponse,
    ServedModel,
)

router = APIRouter(tags=["predictions"])

UPSTREAM_ERRORS = (502, 503, 504)


def passthrough_body(model: type) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON body the route reads raw (schema added by the app)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


PASSTHROUGH_MODELS = (PredictionRequest, BatchPredictionRequest)


def _response(upstream: UpstreamResponse, metrics: GatewayMetrics) -> Response:
    if upstream.status_code >= 500:
        metrics.upstream_error("predictor", "status_5xx")
    return Response(
        content=upstream.content, status_code=upstream.status_code, headers=upstream.headers
    )


@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=error_responses(400, 413, 415, *UPSTREAM_ERRORS),
    openapi_extra=passthrough_body(PredictionRequest),
)
async def predict(request: Request, predictor: PredictorDep, metrics: MetricsDep) -> Response:
    """Predict the species of one flower."""
    upstream = await predictor.forward(
        "POST", "/predict", await request.body(), request.headers.get("content-type")
    )
    return _response(upstream, metrics)


@router.post(
    "/predict/batch",
    response_model=BatchPredictionResponse,
    responses=error_responses(400, 413, 415, *UPSTREAM_ERRORS),
    openapi_extra=passthrough_body(BatchPredictionRequest),
)
async def predict_batch(request: Request, predictor: PredictorDep, metrics: MetricsDep) -> Response:
    """Predict the species of several flowers at once."""
    upstream = await predictor.forward(
        "POST", "/predict/batch", await request.body(), request.headers.get("content-type")
    )
    return _response(upstream, metrics)


@router.get("/model", response_model=ServedModel, responses=error_responses(*UPSTREAM_ERRORS))
async def served_model(predictor: PredictorDep, metrics: MetricsDep) -> Response:
    """Describe the model the predictor is serving."""
    return _response(await predictor.forward("GET", "/model"), metrics)
