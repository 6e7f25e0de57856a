"""Predictions in the project's own JSON, proxied to the predictor unchanged (status code,
body and content type).

The body is passed through as bytes rather than parsed here, so a client gets exactly the
predictor's answer, validation errors included, and the gateway spends no time on JSON.
These are plain routes (`iris_shared.plain_routes`), served before FastAPI; OpenAPI still
documents the requests with the shared schemas (`json_body`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from iris_gateway.proxy import forward
from iris_gateway.upstream import UpstreamTimeout, UpstreamUnavailable
from iris_shared.http import error_responses, json_body
from iris_shared.plain_routes import PlainRoute
from iris_shared.schemas import (
    BatchPredictionRequest,
    BatchPredictionResponse,
    PredictionRequest,
    PredictionResponse,
    ServedModel,
)

JSON_BODIES = (PredictionRequest, BatchPredictionRequest)
# The predictor's own 503s (no model yet, overloaded) are passed through as they are.
UPSTREAM_ERRORS = (UpstreamUnavailable, 503, UpstreamTimeout)
PROTOCOL = "native"


async def predict(request: Request) -> Response:
    """Predict the species of one flower."""
    return await forward(request, PROTOCOL, default_content_type="application/json")


async def predict_batch(request: Request) -> Response:
    """Predict the species of several flowers at once."""
    return await forward(request, PROTOCOL, default_content_type="application/json")


async def served_model(request: Request) -> Response:
    """Describe the model the predictor is serving."""
    return await forward(request, "")


ROUTES = [
    PlainRoute(
        "/predict",
        predict,
        tags=["predictions"],
        response_model=PredictionResponse,
        responses=error_responses(400, 413, 415, *UPSTREAM_ERRORS),
        openapi_extra=json_body(PredictionRequest),
    ),
    PlainRoute(
        "/predict/batch",
        predict_batch,
        tags=["predictions"],
        response_model=BatchPredictionResponse,
        responses=error_responses(400, 413, 415, *UPSTREAM_ERRORS),
        openapi_extra=json_body(BatchPredictionRequest),
    ),
    PlainRoute(
        "/model",
        served_model,
        methods=["GET"],
        tags=["predictions"],
        response_model=ServedModel,
        responses=error_responses(*UPSTREAM_ERRORS),
    ),
]
