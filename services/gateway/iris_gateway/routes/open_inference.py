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


# The protocol's shapes, for the documentation (the predictor validates; the gateway passes
# bodies through). Extra members are allowed, as the protocol allows `parameters` anywhere.
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
    "description": "The protocol's error; the gateway's own refusals add `message` and `detail`.",
}
_TENSOR_METADATA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
_SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}
_MODEL_METADATA = {
    "type": "object",
    "required": ["name", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_METADATA},
        "outputs": {"type": "array", "items": _TENSOR_METADATA},
    },
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "enum": ["predict", "predict_proba"]},
                    "parameters": {"type": "object"},
                },
            },
        },
    },
    "example": {
        "id": "42",
        "inputs": [
            {"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
        ],
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "request_id": {
                    "type": "string",
                    "description": "The server's id of the answer: quote it to POST /feedback.",
                }
            },
        },
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}
_BINARY = {
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary"},
    }
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """Answers in the protocol's error shape, which the gateway's envelope also has."""
    return {
        code: {"description": "The request was not answered.", "content": _json(_ERROR)}
        for code in status_codes
    }


def _get(path: str, endpoint: Any, answer: dict[str, Any] | None, *statuses: int) -> PlainRoute:
    ok: dict[str, Any] = {"description": "The predictor's answer."}
    if answer is not None:
        ok["content"] = _json(answer)
    return PlainRoute(
        path,
        endpoint,
        methods=["GET"],
        tags=TAGS,
        responses={200: ok, **_errors(*statuses, *UPSTREAM_ERRORS)},
    )


def _infer(path: str) -> PlainRoute:
    return PlainRoute(
        path,
        infer,
        # Any: binary requests may have no content type; the predictor decides.
        media_types=None,
        tags=TAGS,
        responses={
            200: {
                "description": "The inference response: JSON, or with binary outputs the JSON "
                "(`Inference-Header-Content-Length` bytes) followed by the raw tensors.",
                "content": {**_json(_INFER_RESPONSE), **_BINARY},
            },
            **_errors(400, 404, 408, 413, 415, *UPSTREAM_ERRORS),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {**_json(_INFER_REQUEST), **_BINARY},
            }
        },
    )


# 404 on every path: an unknown model or version, or a predictor replica older than these
# paths (during a rolling upgrade the gateway may be newer than some replicas).
ROUTES = [
    _get("/v2", server_metadata, _SERVER_METADATA, 404),
    _get("/v2/health/live", server_live, None, 404),
    _get("/v2/health/ready", server_ready, None, 404),
    _get("/v2/models/{name}", model_metadata, _MODEL_METADATA, 404),
    _get("/v2/models/{name}/versions/{version}", model_metadata, _MODEL_METADATA, 404),
    _get("/v2/models/{name}/ready", model_ready, None, 404),
    _get("/v2/models/{name}/versions/{version}/ready", model_ready, None, 404),
    _infer("/v2/models/{name}/infer"),
    _infer("/v2/models/{name}/versions/{version}/infer"),
]
