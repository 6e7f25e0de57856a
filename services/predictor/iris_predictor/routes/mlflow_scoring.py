"""MLflow's scoring protocol, as `mlflow models serve` speaks it, for clients already using it.

    POST /invocations     application/json (dataframe_split, dataframe_records, instances,
                          inputs) or text/csv with a header row -> {"predictions": [species]}
    GET  /ping, /health   200 once a model is loaded
    GET  /version         the MLflow version

Columns are matched by name, in any order; `instances` and `inputs` may also be plain rows in
FEATURE_NAMES order. The rows are checked as on /predict (`iris_predictor.inputs`), and a bad
body is a 400 in MLflow's error shape, `{"error_code": "BAD_REQUEST", "message": ...}`; other
content types get MLflow's 415. No pandas: bodies are decoded straight into one array. The
server's id of the answer (the feedback key) is the Iris-Request-ID header.
"""

from __future__ import annotations

import csv
import io
import itertools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec
import numpy as np
import orjson
from msgspec import UNSET, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from iris_predictor.core import MLFLOW
from iris_predictor.inputs import (
    NOT_DECODED,
    Flower,
    InvalidRows,
    are_numbers,
    are_rows_of_numbers,
    checked_rows,
    rows_from_columns,
    rows_from_records,
    rows_from_table,
    rows_of_flowers,
)
from iris_predictor.routes.predict import ANSWER_ID_HEADER, predict_rows
from iris_predictor.state import PredictorState
from iris_shared.plain_routes import PlainRoute
from iris_shared.protocols import MlflowErrorResponse, MlflowPredictions

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_decode = msgspec.json.Decoder().decode


class _SplitFrame(msgspec.Struct):
    columns: list[str]
    data: list[list[float]]


class _PlainDocument(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The bodies most clients send, decoded with their types checked in C: a `dataframe_split`
    of names and numbers only (what pandas and MLflow's client send), or records of the four
    measurements by name (`dataframe_records`, or `instances`/`inputs` as records)."""

    # UNSET, not None, for a key the body lacks: an explicit `null` must not decode (the
    # general way counts that key as given, and refuses).
    dataframe_split: _SplitFrame | UnsetType = UNSET
    dataframe_records: list[Flower] | UnsetType = UNSET
    instances: list[Flower] | UnsetType = UNSET
    inputs: list[Flower] | UnsetType = UNSET


_decode_plain = msgspec.json.Decoder(_PlainDocument).decode
_RECORD_FORMATS = ("dataframe_records", "instances", "inputs")
# The values of a plain CSV, as the JSON array its rows make once joined by commas.
_decode_plain_values = msgspec.json.Decoder(list[float]).decode
# Every byte a plain CSV's rows may hold: numbers as JSON writes them, commas, spaces, newlines.
_PLAIN_ROW_BYTES = b"0123456789.eE+-, \n"
_JSON = "application/json"
_TEXT = "text/plain"


class BadRequest(Exception):
    """A body MLflow's scoring server would refuse with BAD_REQUEST."""


def _mlflow_error(message: str, status_code: int = 400, code: str = "BAD_REQUEST") -> Response:
    return Response(
        orjson.dumps({"error_code": code, "message": message}),
        status_code=status_code,
        media_type=_JSON,
    )


def _unsupported(content_type: str) -> Response:
    return Response(
        "This predictor only supports the following content types: Types: "
        f"['text/csv', 'application/json']. Got '{content_type}'.",
        status_code=415,
        media_type="text/plain",
    )


def plain_split(body: bytes) -> tuple[list[str], np.ndarray] | None:
    """The columns and numbers of a `dataframe_split` body that holds only names and numbers
    in rows as long as the columns; None for any other body.

    msgspec checks the types in C as it decodes, so the rows need no second pass in Python
    to tell numbers from booleans or strings; any other body goes the general way, which
    reads it or says why not.
    """
    document = _plain_document(body)
    if document is None or isinstance(document.dataframe_split, UnsetType):
        return None
    return _split_table(document.dataframe_split)


def _split_table(frame: _SplitFrame) -> tuple[list[str], np.ndarray] | None:
    width = len(frame.columns)
    if not frame.data or set(map(len, frame.data)) != {width}:
        return None
    values = itertools.chain.from_iterable(frame.data)
    table = np.fromiter(values, dtype=np.float64, count=len(frame.data) * width)
    return frame.columns, table.reshape(len(frame.data), width)


def _plain_document(body: bytes) -> _PlainDocument | None:
    """`body` as a `_PlainDocument` with exactly one of the formats, or None."""
    try:
        document = _decode_plain(body)
    except NOT_DECODED:
        return None
    given = [key for key in FORMATS if getattr(document, key) is not UNSET]
    return document if len(given) == 1 else None


def plain_records(body: bytes, max_rows: int) -> np.ndarray | None:
    """The rows of a body of records holding the four measurements by name and nothing else,
    all in bounds and at most `max_rows` of them; None for any other body."""
    document = _plain_document(body)
    return _record_rows(document, max_rows) if document is not None else None


def _record_rows(document: _PlainDocument, max_rows: int) -> np.ndarray | None:
    for key in _RECORD_FORMATS:
        records = getattr(document, key)
        if records is not UNSET:
            return rows_of_flowers(records) if len(records) <= max_rows else None
    return None


def rows_from_json(body: bytes, max_rows: int) -> np.ndarray:
    """The rows of a JSON body: the plain shapes the fast way, any other the general way,
    which reads it or says why not (tests/test_scoring_bodies.py checks both agree)."""
    document = _plain_document(body)
    if document is not None:
        if not isinstance(document.dataframe_split, UnsetType):
            if (table := _split_table(document.dataframe_split)) is not None:
                return rows_from_table(*table, max_rows)
        elif (rows := _record_rows(document, max_rows)) is not None:
            return rows
    return rows_from_any_json(body, max_rows)


def rows_from_any_json(body: bytes, max_rows: int) -> np.ndarray:
    """The rows of any JSON body MLflow's scoring server takes."""
    try:
        document = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise BadRequest("Ensure that input is a valid JSON formatted string.") from None
    if not isinstance(document, dict):
        raise BadRequest(
            "The input must be a JSON object with one of the keys " + ", ".join(FORMATS)
        )
    keys = [key for key in FORMATS if key in document]
    if len(keys) != 1:
        raise BadRequest(
            f"The input must have exactly one of the keys {', '.join(FORMATS)}; "
            f"received {list(document)}."
        )
    key = keys[0]
    data = document[key]
    if key == "dataframe_split":
        if not isinstance(data, dict) or "columns" not in data or "data" not in data:
            raise BadRequest("dataframe_split needs `columns` and `data`.")
        if not isinstance(data["columns"], list):
            raise BadRequest("dataframe_split's `columns` must be a list.")
        return rows_from_columns(data["columns"], data["data"], max_rows)
    if key == "dataframe_records":
        if not isinstance(data, list):
            raise BadRequest("dataframe_records must be a list of objects.")
        return rows_from_records(data, max_rows)
    # instances / inputs: records, a column mapping, or plain rows in FEATURE_NAMES order.
    if isinstance(data, dict):
        columns = list(data)
        values = [data[c] if isinstance(data[c], list) else [data[c]] for c in columns]
        if len({len(v) for v in values}) > 1:
            raise BadRequest(f"Every column of `{key}` must have as many values.")
        return rows_from_columns(
            columns, [list(row) for row in zip(*values, strict=True)], max_rows
        )
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return rows_from_records(data, max_rows)
    if not isinstance(data, list) or not (are_rows_of_numbers(data) or are_numbers(data)):
        raise BadRequest(f"`{key}` must hold rows of numbers, records or columns.")
    return checked_rows(data, max_rows)


def plain_csv(body: bytes) -> tuple[list[str], np.ndarray] | None:
    """The header and the numbers of a CSV made only of a plain header and rows of plain
    numbers, as pandas' `to_csv(index=False)` writes them; None for any other CSV.

    Such rows are decoded as one JSON array (`[5.1,3.5,1.4,0.2,...]`, in C) rather than by
    the csv module and `float()` per value, a Python call per number. Only bytes of
    numbers, commas, spaces and newlines are let through, and every line must have as many
    commas as the header, so that each row is one line's values; whatever JSON does not read
    as numbers (quotes, `\\r`, `nan`, `.5`, an empty field or line) goes the general way,
    which reads it or says why not.
    """
    header, _, data = body.partition(b"\n")
    data = data.rstrip(b"\n")
    if not data or data.translate(None, _PLAIN_ROW_BYTES):
        return None
    if b'"' in header or b"\r" in header or header.startswith(b","):
        return None
    try:
        columns = header.decode("utf-8").split(",")
    except UnicodeDecodeError:
        return None
    text = np.frombuffer(data, dtype=np.uint8)
    commas_so_far = np.cumsum(text == ord(","))
    commas_per_line = np.diff(commas_so_far[text == ord("\n")], prepend=0, append=commas_so_far[-1])
    if (commas_per_line != len(columns) - 1).any():
        return None
    try:
        values = _decode_plain_values(b"[" + data.replace(b"\n", b",") + b"]")
    except msgspec.DecodeError:
        return None
    if len(values) != len(commas_per_line) * len(columns):
        return None
    table = np.fromiter(values, dtype=np.float64, count=len(values))
    # JSON reads `-0` as the integer 0, float() as -0.0: a zero (refused either way) is left
    # to the general way, so that the refusal names it with its sign.
    if not table.all():
        return None
    return columns, table.reshape(len(commas_per_line), len(columns))


def rows_from_csv(body: bytes, max_rows: int) -> np.ndarray:
    if (plain := plain_csv(body)) is not None:
        return rows_from_table(*plain, max_rows)
    return rows_from_any_csv(body, max_rows)


def rows_from_any_csv(body: bytes, max_rows: int) -> np.ndarray:
    """The rows of any CSV with a header row, read by the csv module."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("Ensure that input is a valid UTF-8 encoded string.") from None
    # newline="" lets the csv module see every line ending itself (\r, \r\n and \n), as the
    # csv docs ask; a stray one inside a field is still a client's error, not a 500.
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise BadRequest(f"The CSV could not be read: {error}.") from None
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise BadRequest("The CSV needs a header row with the column names, then rows.")
    header, *data = lines
    # pandas' to_csv writes the index as a first, unnamed column.
    if header and header[0] == "":
        header, data = header[1:], [row[1:] for row in data]
    try:
        numbers = [[float(value) for value in row] for row in data]
    except ValueError:
        raise BadRequest("Every CSV value must be a number.") from None
    return rows_from_columns(header, numbers, max_rows)


async def invocations(request: Request) -> Response:
    """Predict the species of rows sent as MLflow's scoring server takes them (JSON or CSV)."""
    state: PredictorState = request.app.state.predictor
    content_type = request.headers.get("content-type", "")
    mime_type, _, parameters = content_type.partition(";")
    mime_type = mime_type.strip().lower()
    charset = parameters.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8",):
        return Response(
            "The scoring server only supports UTF-8", status_code=415, media_type="text/plain"
        )
    body = await request.body()
    max_rows = state.settings.max_batch_rows
    try:
        if mime_type == "application/json":
            rows = rows_from_json(body, max_rows)
        elif mime_type == "text/csv":
            rows = rows_from_csv(body, max_rows)
        else:
            return _unsupported(content_type)
    except (BadRequest, InvalidRows) as exc:
        return _mlflow_error(str(getattr(exc, "message", exc)))
    answer = await predict_rows(request, rows, MLFLOW)
    return Response(
        orjson.dumps({"predictions": answer.labels()}),
        media_type=_JSON,
        headers={ANSWER_ID_HEADER: answer.request_id},
    )


async def ping(request: Request) -> Response:
    """Report whether a model is loaded (MLflow's /ping and /health)."""
    state: PredictorState = request.app.state.predictor
    ready = state.holder.current is not None
    # MLflow labels these bodies application/json although they are not JSON; text/plain is
    # what they are, and its clients read only the status (/ping) or the text (/version).
    return Response("\n", status_code=200 if ready else 503, media_type=_TEXT)


async def mlflow_version(request: Request) -> Response:
    """Report the MLflow version the predictor speaks (MLflow's /version)."""
    return Response(_MLFLOW_VERSION, media_type=_TEXT)


def _mlflow_version() -> str:
    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


_MLFLOW_VERSION = _mlflow_version()

_TAGS = ["mlflow scoring protocol"]
_PLAIN_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}
_TEXT_ANSWERS: dict[int | str, dict[str, Any]] = {200: _PLAIN_TEXT, 503: _PLAIN_TEXT}
ROUTES = (
    # Any Content-Type reaches the route, which answers 415 as MLflow does.
    PlainRoute(
        "/invocations",
        invocations,
        media_types=None,
        tags=_TAGS,
        response_model=MlflowPredictions,
        responses={
            400: {"model": MlflowErrorResponse},
            415: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        },
    ),
    PlainRoute("/ping", ping, methods=["GET"], tags=_TAGS, responses=_TEXT_ANSWERS),
    PlainRoute("/health", ping, methods=["GET"], tags=_TAGS, responses=_TEXT_ANSWERS),
    PlainRoute("/version", mlflow_version, methods=["GET"], tags=_TAGS, responses=_TEXT_ANSWERS),
)
