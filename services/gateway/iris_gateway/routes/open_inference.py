"""The Open Inference Protocol V2 (KServe, Triton, MLServer), proxied to the predictor.

    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           the predictor's liveness and readiness
    GET  /v2/models/{name}[/versions/{version}]      model metadata: inputs, outputs, datatypes
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

Every request goes to a ready predictor replica on the same path, and its answer comes back
unchanged, errors (`{"error": "..."}`) included. The binary tensor extension passes through
both ways: the body as bytes with its `Inference-Header-Content-Length`, whatever content type
the client gave (tritonclient gives none), so the predictor alone decides what it reads. What
the gateway refuses itself (a body over the limit, no predictor reachable) has the gateway's
error envelope, whose `error` is a string as V2 clients expect.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from iris_gateway.proxy import forward
from iris_shared.http import error_responses
from iris_shared.plain_routes import PlainRoute

PROTOCOL = "v2"
TAGS = ["open inference protocol v2"]
UPSTREAM_ERRORS = (502, 503, 504)


async def server_metadata(request: Request) -> Response:
    """Describe the server: its name, version and protocol extensions."""
    return await forward(request, "")


async def server_live(request: Request) -> Response:
    """Report whether the predictor is alive."""
    return await forward(request, "")


async def server_ready(request: Request) -> Response:
    """Report whether the predictor is ready to infer."""
    return await forward(request, "")


async def model_metadata(request: Request) -> Response:
    """Describe a served model: its versions, inputs and outputs."""
    return await forward(request, "")


async def model_ready(request: Request) -> Response:
    """Report whether a model (or one of its versions) is ready to infer."""
    return await forward(request, "")


async def infer(request: Request) -> Response:
    """Predict the species of the rows of one [n, 4] tensor (JSON or binary tensors)."""
    return await forward(request, PROTOCOL)


_ANY_JSON: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **_ANY_JSON,
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
    }
}


def _get(path: str, endpoint: Any, *not_found: int) -> PlainRoute:
    return PlainRoute(
        path,
        endpoint,
        methods=["GET"],
        tags=TAGS,
        responses={
            200: {"description": "The predictor's answer.", "content": _ANY_JSON},
            **error_responses(*not_found, *UPSTREAM_ERRORS),
        },
    )


def _infer(path: str) -> PlainRoute:
    return PlainRoute(
        path,
        infer,
        # Any: binary requests may have no content type; the predictor decides.
        media_types=None,
        tags=TAGS,
        responses={
            200: {"description": "The inference response.", "content": _ANY_JSON},
            **error_responses(400, 404, 413, 415, *UPSTREAM_ERRORS),
        },
        openapi_extra=_INFER_BODY,
    )


ROUTES = [
    _get("/v2", server_metadata),
    _get("/v2/health/live", server_live),
    _get("/v2/health/ready", server_ready),
    _get("/v2/models/{name}", model_metadata, 404),
    _get("/v2/models/{name}/versions/{version}", model_metadata, 404),
    _get("/v2/models/{name}/ready", model_ready, 404),
    _get("/v2/models/{name}/versions/{version}/ready", model_ready, 404),
    _infer("/v2/models/{name}/infer"),
    _infer("/v2/models/{name}/versions/{version}/infer"),
]
