"""The Open Inference Protocol V2 (KServe, MLServer, Triton), REST, with binary tensors.

    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           liveness, readiness
    GET  /v2/models/{name}[/versions/{v}]            model metadata (inputs, outputs, classes)
    GET  /v2/models/{name}[/versions/{v}]/ready      model readiness
    POST /v2/models/{name}[/versions/{v}]/infer      inference

`{name}` is the registered model's name; without a version the production version answers,
and `versions/{v}` answers only for a version served under an alias (production, or the
challenger scored in its shadow). One input tensor, `[n, 4]`, FP32 or FP64 (the measurements in
FEATURE_NAMES order); outputs `predict` (BYTES, the species) and `predict_proba` (FP64,
`[n, classes]`), or those the request names. The request `id` is echoed; the server's id of
the answer (the feedback key) is `parameters.request_id` and the Iris-Request-ID header.

Binary tensor extension (as Triton and tritonclient do it): a request whose JSON is followed by
raw little-endian tensor data says how long the JSON is in `Inference-Header-Content-Length`,
and each binary input's size in `parameters.binary_data_size`. Outputs asked for with
`parameters.binary_data` (or the request's `binary_data_output`) come after the answer's JSON
the same way; BYTES elements as a 4-byte little-endian length, then the bytes.

Errors are `{"error": "<message>"}`: 400 for a bad request, 404 for an unknown model or
version. Rows are checked as on /predict (`iris_predictor.inputs`).
"""

from __future__ import annotations

import functools
import itertools
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from iris_predictor.core import OPEN_INFERENCE, Answer
from iris_predictor.inference import LoadedModel
from iris_predictor.inputs import (
    NOT_DECODED,
    TOO_LARGE,
    InvalidRows,
    TooManyRows,
    are_numbers,
    checked_rows,
)
from iris_predictor.routes.predict import ANSWER_ID_HEADER, predict_rows
from iris_predictor.state import PredictorState
from iris_shared.http import ServiceError, json_body
from iris_shared.plain_routes import PlainRoute
from iris_shared.protocols import (
    InferenceErrorResponse,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
)
from iris_shared.schemas import FEATURE_NAMES

HEADER_LENGTH = "inference-header-content-length"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"
OUTPUTS = (PREDICT, PREDICT_PROBA)
INPUT_NAME = "input-0"
_DTYPES: dict[str, np.dtype[np.floating]] = {"FP64": np.dtype("<f8"), "FP32": np.dtype("<f4")}
_decode = msgspec.json.Decoder().decode


class _PlainTensor(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An input tensor as clients usually send it in JSON: numbers only, flat (tritonclient,
    MLServer's examples), no parameters."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class _PlainRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A request of one such tensor that leaves the outputs to the server."""

    inputs: list[_PlainTensor]
    id: str | UnsetType = UNSET


_decode_plain = msgspec.json.Decoder(_PlainRequest).decode


class V2Error(Exception):
    """An error answered as the protocol says: `{"error": message}` with `status_code`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def _error(status_code: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def v2_errors(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
    """The endpoint, with its refusals worded as V2 clients read them."""

    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except V2Error as exc:
            return _error(exc.status_code, exc.message)
        except ServiceError as exc:
            # ModelNotReady, Overloaded, TooManyRows, InvalidRows: their status and headers.
            return _error(exc.status_code, exc.message, exc.headers)

    answered.__name__ = endpoint.__name__
    answered.__doc__ = endpoint.__doc__
    return answered


def _state(request: Request) -> PredictorState:
    state: PredictorState = request.app.state.predictor
    return state


def _model(request: Request) -> LoadedModel:
    """The model `{name}` and `{version}` ask for, or a 404 that says what is served."""
    state = _state(request)
    name = request.path_params["name"]
    served_name = state.holder.name
    if name != served_name:
        raise V2Error(
            404, f"Model '{name}' is not served here; this server serves '{served_name}'."
        )
    version = request.path_params.get("version")
    if version is None:
        return state.core.served()
    models = state.core.by_version()
    if version not in models:
        served = ", ".join(sorted(models)) or "none yet"
        raise V2Error(
            404,
            f"Version '{version}' of '{name}' is not served here; served versions: {served}.",
        )
    return models[version]


def _metadata(model: LoadedModel) -> dict[str, Any]:
    return {
        "name": model.info.name,
        "versions": [model.version],
        "platform": "sklearn",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, len(FEATURE_NAMES)]}],
        "outputs": [
            {"name": PREDICT, "datatype": "BYTES", "shape": [-1]},
            {"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(model.classes)]},
        ],
        "parameters": {
            "alias": model.info.alias,
            "features": list(FEATURE_NAMES),
            "classes": list(model.classes),
        },
    }


async def server_metadata(request: Request) -> Response:
    """Describe the server (Open Inference Protocol)."""
    return JSONResponse(
        {"name": "iris-mlops-predictor", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    )


async def server_live(request: Request) -> Response:
    """Report that the server is alive (Open Inference Protocol)."""
    return JSONResponse({"live": True})


@v2_errors
async def server_ready(request: Request) -> Response:
    """Report whether a model is loaded (Open Inference Protocol)."""
    _state(request).core.served()
    return JSONResponse({"ready": True})


@v2_errors
async def model_metadata(request: Request) -> Response:
    """Describe the model: its input and output tensors and its classes."""
    return Response(orjson.dumps(_metadata(_model(request))), media_type="application/json")


@v2_errors
async def model_ready(request: Request) -> Response:
    """Report whether the model (version) is loaded."""
    model = _model(request)
    return JSONResponse({"name": model.info.name, "ready": True})


def _split_body(request: Request, body: bytes) -> tuple[dict[str, Any], bytes]:
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise V2Error(400, f"{HEADER_LENGTH} must be the length of the JSON part of the body.")
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        document = _decode(json_part)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise V2Error(400, "The request is not valid JSON.") from None
    if not isinstance(document, dict):
        raise V2Error(400, "The request must be a JSON object.")
    return document, binary


def _rows(document: dict[str, Any], binary: bytes, max_rows: int) -> np.ndarray:
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2Error(400, f"Send one input tensor of shape [n, {len(FEATURE_NAMES)}].")
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    if datatype not in _DTYPES:
        raise V2Error(400, f"The input's datatype must be FP32 or FP64, not {datatype!r}.")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or shape[1] != len(FEATURE_NAMES)
    ):
        raise V2Error(400, f"The input's shape must be [n, {len(FEATURE_NAMES)}], not {shape!r}.")
    count = shape[0] * shape[1]
    if shape[0] > max_rows:
        raise V2Error(413, f"The batch has {shape[0]} rows; the limit is {max_rows}.")
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        dtype = _DTYPES[datatype]
        if not isinstance(size, int) or size != count * dtype.itemsize or size != len(binary):
            raise V2Error(
                400,
                f"binary_data_size must be {count * dtype.itemsize} bytes ({shape} {datatype}) "
                f"and the binary data after the JSON that long; got {size!r} and {len(binary)}.",
            )
        values: Any = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise V2Error(400, "The input needs `data` (or binary data).")
        flat = _flatten(data)
        if len(flat) != count:
            raise V2Error(
                400, f"The input's data has {len(flat)} values; shape {shape} needs {count}."
            )
        if not are_numbers(flat):
            raise V2Error(400, "The input's data must be numbers.")
        try:
            values = np.asarray(flat, dtype=_DTYPES[datatype]).reshape(shape)
        except OverflowError:
            raise V2Error(400, TOO_LARGE) from None
    return checked_rows(values, max_rows)


def _plain(body: bytes, max_rows: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The rows of a plain request (`_PlainRequest`, every value in bounds), and its `id` as
    the document to echo it from; None for any other body, which `_split_body` and `_rows`
    then read or refuse. msgspec checks the types in C as it decodes, so there is no second
    pass in Python over the document (tests/test_open_inference.py checks both ways agree)."""
    try:
        document = _decode_plain(body)
    except NOT_DECODED:
        return None
    if len(document.inputs) != 1:
        return None
    tensor = document.inputs[0]
    dtype, shape = _DTYPES.get(tensor.datatype), tensor.shape
    if dtype is None or len(shape) != 2 or shape[1] != len(FEATURE_NAMES):
        return None
    if shape[0] * shape[1] != len(tensor.data):
        return None
    # No rows, too many or a value out of bounds: the general way words the refusal.
    try:
        rows = checked_rows(np.asarray(tensor.data, dtype=dtype).reshape(shape), max_rows)
    except (InvalidRows, TooManyRows):
        return None
    return rows, ({} if document.id is UNSET else {"id": document.id})


def _flatten(data: list[Any]) -> list[Any]:
    kinds = set(map(type, data))
    if list not in kinds:
        return data
    if kinds == {list}:
        # Rows of values, the usual [n, 4]: a level is flattened in C, not a Python loop per row.
        return _flatten(list(itertools.chain.from_iterable(data)))
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


# Every output, in JSON: what a request that names none and sets no parameters gets.
_DEFAULT_OUTPUTS = [(name, False) for name in OUTPUTS]


def _requested_outputs(document: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, binary) of each output to send, in order."""
    parameters = document.get("parameters") or {}
    binary_default = bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))
    outputs = document.get("outputs")
    if outputs is None:
        return [(name, binary_default) for name in OUTPUTS]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise V2Error(400, "`outputs` must be a list of objects with a `name`.")
    requested = []
    for output in outputs:
        name = output.get("name")
        if name not in OUTPUTS:
            raise V2Error(400, f"Unknown output {name!r}; the outputs are {', '.join(OUTPUTS)}.")
        options = output.get("parameters") or {}
        binary = options.get("binary_data", binary_default) if isinstance(options, dict) else False
        requested.append((name, bool(binary)))
    return requested


def _encoded_answer(
    document: dict[str, Any], model_name: str, answer: Answer, outputs: list[tuple[str, bool]]
) -> tuple[bytes, bytes]:
    """The answer's JSON and the binary data that follows it."""
    n = len(answer.probabilities)
    tensors = []
    blobs = []
    for name, binary in outputs:
        if name == PREDICT:
            tensor: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": [n]}
            if binary:
                elements = _bytes_elements(answer.classes)
                blob = b"".join([elements[i] for i in answer.predicted.tolist()])
            else:
                tensor["data"] = answer.labels()
        else:
            probabilities = answer.probabilities
            tensor = {"name": name, "datatype": "FP64", "shape": list(probabilities.shape)}
            if binary:
                blob = np.ascontiguousarray(probabilities, dtype="<f8").tobytes()
            else:
                tensor["data"] = probabilities.ravel()
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(tensor)
    body: dict[str, Any] = {
        "model_name": model_name,
        "model_version": answer.model_version,
    }
    if "id" in document:
        body["id"] = document["id"]
    body["parameters"] = {"request_id": answer.request_id}
    body["outputs"] = tensors
    return _encode_numpy(body), b"".join(blobs)


@functools.lru_cache(maxsize=8)
def _bytes_elements(classes: tuple[str, ...]) -> tuple[bytes, ...]:
    """Each class as one element of a binary BYTES tensor: its UTF-8 length, then the bytes."""
    encoded = [name.encode() for name in classes]
    return tuple(struct.pack("<I", len(value)) + value for value in encoded)


def _encode_numpy(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


@v2_errors
async def infer(request: Request) -> Response:
    """Predict the species of rows of measurements (Open Inference Protocol V2, JSON or binary)."""
    model = _model(request)
    state = _state(request)
    body = await request.body()
    max_rows = state.settings.max_batch_rows
    plain = None if HEADER_LENGTH in request.headers else _plain(body, max_rows)
    if plain is not None:
        rows, document = plain
        outputs = _DEFAULT_OUTPUTS
    else:
        document, binary = _split_body(request, body)
        try:
            rows = _rows(document, binary, max_rows)
        except (InvalidRows, RequestValidationError) as exc:
            raise V2Error(400, str(getattr(exc, "message", exc))) from None
        outputs = _requested_outputs(document)
    answer = await predict_rows(request, rows, OPEN_INFERENCE, model=model)
    head, tail = _encoded_answer(document, model.info.name, answer, outputs)
    if not tail:
        return Response(
            head, media_type="application/json", headers={ANSWER_ID_HEADER: answer.request_id}
        )
    return Response(
        head + tail,
        media_type="application/octet-stream",
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            ANSWER_ID_HEADER: answer.request_id,
        },
    )


def _routes() -> tuple[PlainRoute, ...]:
    tags = ["open inference protocol"]
    errors = {"model": InferenceErrorResponse}
    get: dict[str, Any] = {"methods": ["GET"], "tags": tags}
    routes = [
        PlainRoute("/v2", server_metadata, **get),
        PlainRoute("/v2/health/live", server_live, **get),
        PlainRoute("/v2/health/ready", server_ready, responses={503: errors}, **get),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            PlainRoute(
                base,
                model_metadata,
                response_model=ModelMetadataResponse,
                responses={404: errors, 503: errors},
                **get,
            ),
            PlainRoute(f"{base}/ready", model_ready, responses={404: errors, 503: errors}, **get),
            # Any Content-Type: binary requests come as application/octet-stream or untyped.
            PlainRoute(
                f"{base}/infer",
                infer,
                media_types=None,
                tags=tags,
                response_model=InferenceResponse,
                responses={code: errors for code in (400, 404, 413, 503)},
                openapi_extra=json_body(InferenceRequest),
            ),
        ]
    return tuple(routes)


ROUTES = _routes()
JSON_BODIES = (InferenceRequest,)
