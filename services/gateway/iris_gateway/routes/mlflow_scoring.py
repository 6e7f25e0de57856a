"""MLflow's scoring protocol (`mlflow models serve`), proxied to the predictor.

    POST /invocations     dataframe_split, dataframe_records, instances or inputs as JSON, or
                          text/csv → {"predictions": [...]}
    GET  /ping, /health   200 once the predictor has a model
    GET  /version         the MLflow version the predictor serves with

The answers are the predictor's, unchanged: MLflow's error shape for a bad body, its 415 for
another content type. MLflow's `/health` is the predictor's model check; the gateway's own
liveness and readiness stay `/healthz` and `/readyz`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iris_gateway.proxy import forward
from iris_gateway.upstream import UpstreamTimeout, UpstreamUnavailable
from iris_shared.http import ErrorResponse, error_responses
from iris_shared.plain_routes import PlainRoute

PROTOCOL = "mlflow"
TAGS = ["mlflow scoring protocol"]
# The predictor's own 503s (no model yet, overloaded) are passed through as they are.
UPSTREAM_ERRORS = (UpstreamUnavailable, 503, UpstreamTimeout)


async def invocations(request: Request) -> Response:
    """Predict the species of the rows of a dataframe, as `mlflow models serve` does."""
    return await forward(request, PROTOCOL)


async def ping(request: Request) -> Response:
    """Answer 200 once the predictor has a model, as `mlflow models serve` does."""
    return await forward(request, "")


async def health(request: Request) -> Response:
    """Answer 200 once the predictor has a model (MLflow's alias of /ping)."""
    return await forward(request, "")


async def version(request: Request) -> Response:
    """Tell the version of MLflow the predictor serves with."""
    return await forward(request, "")


_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_MLFLOW_ERROR = {
    "type": "object",
    "required": ["error_code", "message"],
    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
}
_PREDICTIONS = {
    "type": "object",
    "required": ["predictions"],
    "properties": {
        "predictions": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The species of each row, in order.",
        }
    },
}
_FRAME = {
    "type": "object",
    "description": "One of MLflow's input forms: dataframe_split, dataframe_records, "
    "instances or inputs.",
    "example": {
        "dataframe_split": {
            "columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
            "data": [[5.1, 3.5, 1.4, 0.2]],
        }
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _get(path: str, endpoint: Any) -> PlainRoute:
    return PlainRoute(
        path,
        endpoint,
        methods=["GET"],
        tags=TAGS,
        responses={
            200: {"description": "The predictor's answer.", "content": _TEXT},
            # MLflow's answer without a model, or a predictor replica older than these paths.
            **error_responses(404, *UPSTREAM_ERRORS),
        },
    )


ROUTES = [
    PlainRoute(
        "/invocations",
        invocations,
        # The predictor answers other types with MLflow's own 415.
        media_types=None,
        tags=TAGS,
        responses={
            # 404: a predictor replica older than these paths (during a rolling upgrade).
            **error_responses(404, 408, 413, *UPSTREAM_ERRORS),
            200: {"description": "The predictions.", "content": _json(_PREDICTIONS)},
            400: {
                "description": "MLflow's error: the body is not a frame of flowers.",
                "content": _json(_MLFLOW_ERROR),
            },
            415: {
                "description": "Neither JSON nor CSV: MLflow's text answer (the error envelope "
                "from a predictor replica older than this path).",
                "content": _TEXT,
                "model": ErrorResponse,
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {**_json(_FRAME), "text/csv": {"schema": {"type": "string"}}},
            }
        },
    ),
    _get("/ping", ping),
    _get("/health", health),
    _get("/version", version),
]
