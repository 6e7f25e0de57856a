"""Request bodies to arrays: the shared contract's rules, at the speed of the hot path.

The contract is `iris_shared.schemas` (pydantic): it documents the API and words every 400.
Validating a 1,000-row batch with it builds 1,000 model objects and costs more than scoring
them, so bodies are first decoded by msgspec straight into structs generated here from the
same names (numbers only, no unknown fields, no missing ones), then into one array whose
bounds are checked at once by numpy. Only a body that fails either step goes through pydantic,
which raises the documented 400 or, for anything the contract accepts that the fast path did
not, gives the rows. The fast path never accepts what the contract refuses, and never refuses
on its own: tests/test_inputs.py checks both properties against the pydantic models.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Annotated, Any, Final

import msgspec
import numpy as np
from fastapi.exceptions import RequestValidationError
from msgspec.structs import astuple
from pydantic import TypeAdapter, ValidationError

from iris_shared.http import ServiceError
from iris_shared.schemas import (
    FEATURE_NAMES,
    MAX_MEASUREMENT_CM,
    BatchPredictionRequest,
    PredictionRequest,
)

# Bounds are checked on the whole array afterwards: cheaper than per value while decoding.
# Untracked by the garbage collector (gc=False): they hold floats and a list of them, so they can
# never be part of a cycle, and a batch's thousand tracked objects would each count towards a
# collection.
Flower: Any = msgspec.defstruct(
    "Flower", [(name, float) for name in FEATURE_NAMES], forbid_unknown_fields=True, gc=False
)
_Batch: Any = msgspec.defstruct(
    "Batch",
    [("instances", Annotated[list[Flower], msgspec.Meta(min_length=1)])],
    forbid_unknown_fields=True,
    gc=False,
)
_decode_flower = msgspec.json.Decoder(Flower).decode
_decode_batch = msgspec.json.Decoder(_Batch).decode

# What the fast path may raise on a body it cannot take. msgspec lets UnicodeDecodeError
# through for bytes that are not UTF-8 inside a key (msgspec/msgspec#714); the contract then
# reports the body as malformed JSON.
NOT_DECODED = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError)

_flower_contract = TypeAdapter(PredictionRequest)
_batch_contract = TypeAdapter(BatchPredictionRequest)


class TooManyRows(ServiceError):
    status_code = 413
    error = "payload_too_large"


def one_flower(body: bytes) -> np.ndarray:
    """The one row of a `PredictionRequest` body, shape (1, 4)."""
    try:
        values = astuple(_decode_flower(body))
    except NOT_DECODED:
        values = None
    # Four comparisons in Python cost less than one numpy call on four values. False for NaN.
    if values is None or not all(0 < value <= MAX_MEASUREMENT_CM for value in values):
        return _rows(_contract(_flower_contract, body))
    return np.array([values], dtype=np.float64)


def batch_of_flowers(body: bytes, max_rows: int) -> np.ndarray:
    """The rows of a `BatchPredictionRequest` body, shape (n, 4), at most `max_rows` of them."""
    # Every row is a JSON object: counting braces bounds the rows before anything is parsed.
    objects = body.count(b"{") - 1
    if objects > max_rows:
        raise TooManyRows(f"The batch has {objects} rows; the limit is {max_rows}.")
    try:
        rows = rows_of_flowers(_decode_batch(body).instances)
    except NOT_DECODED:
        rows = None
    if rows is None:
        rows = _rows(*_contract(_batch_contract, body).instances)
    return rows


def rows_of_flowers(flowers: list[Any]) -> np.ndarray | None:
    """The (n, 4) rows of decoded `Flower`s, or None if a value is out of bounds (or NaN): the
    caller's general way then words the refusal (or the emptiness)."""
    if not flowers:
        return None
    if len(flowers) == 1:
        values = astuple(flowers[0])
        # Four comparisons in Python cost less than one numpy call on four values.
        if not all(0 < value <= MAX_MEASUREMENT_CM for value in values):
            return None
        return np.array([values], dtype=np.float64)
    # Every value in one pass that runs in C (each flower's tuple, chained), with no Python
    # loop per row or per value.
    every_value = itertools.chain.from_iterable(map(astuple, flowers))
    rows = np.fromiter(every_value, np.float64, len(flowers) * len(FEATURE_NAMES))
    rows = rows.reshape(len(flowers), len(FEATURE_NAMES))
    return rows if _within_bounds(rows) else None


def _within_bounds(rows: np.ndarray) -> bool:
    # Also false for NaN; an infinity is above the bound.
    return bool(((rows > 0) & (rows <= MAX_MEASUREMENT_CM)).all())


def _rows(*flowers: PredictionRequest) -> np.ndarray:
    return np.array([flower.as_row() for flower in flowers], dtype=np.float64).reshape(-1, 4)


def _contract(adapter: TypeAdapter[Any], body: bytes) -> Any:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        # Reported exactly as FastAPI reports a body it validated itself.
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


class InvalidRows(ServiceError):
    """Rows a protocol adapter decoded that the contract refuses (each protocol words it)."""

    status_code = 400
    error = "validation_error"


# An integer too large for a float (JSON has no limit) cannot even be compared with the bounds.
TOO_LARGE: Final = (
    f"A value is too large to be read as a number; every measurement is at most "
    f"{MAX_MEASUREMENT_CM:g} cm."
)


def checked_rows(values: Any, max_rows: int) -> np.ndarray:
    """`values` as an (n, 4) float64 array of measurements the contract accepts: n from 1 to
    `max_rows` (413 beyond), every value finite, greater than 0 and at most MAX_MEASUREMENT_CM
    (400 otherwise, naming the first bad value)."""
    try:
        # C order: columns picked out of a table by name come as a strided view, and the answers
        # kept for feedback are serialised straight from this buffer (orjson takes C order only).
        rows = np.ascontiguousarray(values, dtype=np.float64)
    except OverflowError:
        raise InvalidRows(TOO_LARGE) from None
    except (TypeError, ValueError):
        raise InvalidRows("The rows must be numbers only.") from None
    if rows.ndim == 1 and rows.size == len(FEATURE_NAMES):
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or rows.shape[1] != len(FEATURE_NAMES):
        raise InvalidRows(
            f"Each row must have the {len(FEATURE_NAMES)} measurements "
            f"{', '.join(FEATURE_NAMES)}; got shape {list(rows.shape)}."
        )
    if len(rows) == 0:
        raise InvalidRows("There are no rows to predict.")
    if len(rows) > max_rows:
        raise TooManyRows(f"The batch has {len(rows)} rows; the limit is {max_rows}.")
    if not _within_bounds(rows):
        bad = np.argwhere(~((rows > 0) & (rows <= MAX_MEASUREMENT_CM)))[0]
        row, column = int(bad[0]), int(bad[1])
        raise InvalidRows(
            f"Row {row}: {FEATURE_NAMES[column]} is {float(rows[row, column])!r}; every "
            f"measurement must be greater than 0 and at most {MAX_MEASUREMENT_CM:g} cm."
        )
    return rows


def rows_from_columns(columns: list[Any], data: list[Any], max_rows: int) -> np.ndarray:
    """Rows given with their column names, in any order, as FEATURE_NAMES-ordered rows."""
    order = _feature_order(columns)
    return _ordered_rows(_numbers(data), order, max_rows)


def rows_from_table(columns: list[str], table: np.ndarray, max_rows: int) -> np.ndarray:
    """`rows_from_columns` for values already decoded as float64 numbers."""
    return _ordered_rows(table, _feature_order(columns), max_rows)


def _feature_order(columns: list[Any]) -> list[int]:
    """Where each of FEATURE_NAMES is among `columns`, which must name each exactly once."""
    names = [str(name) for name in columns]
    missing = [name for name in FEATURE_NAMES if name not in names]
    unknown = [name for name in names if name not in FEATURE_NAMES]
    if missing or unknown or len(set(names)) != len(names):
        raise InvalidRows(
            f"The columns must be {', '.join(FEATURE_NAMES)} (any order)"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + "."
        )
    return [names.index(name) for name in FEATURE_NAMES]


def _ordered_rows(table: np.ndarray, order: list[int], max_rows: int) -> np.ndarray:
    if table.ndim != 2 or table.shape[1] != len(order):
        raise InvalidRows(f"Each row must have {len(order)} values, one per column.")
    return checked_rows(table[:, order], max_rows)


def rows_from_records(records: list[Any], max_rows: int) -> np.ndarray:
    """Rows given as objects keyed by measurement name."""
    if not records or not all(isinstance(record, dict) for record in records):
        raise InvalidRows("The records must be a non-empty list of objects.")
    keys = list(records[0])
    if any(set(record) != set(keys) for record in records[1:]):
        raise InvalidRows("Every record must have the same fields.")
    return rows_from_columns(keys, [[record[key] for key in keys] for record in records], max_rows)


def _numbers(data: Any) -> np.ndarray:
    # Numbers only: booleans and strings are refused, as the native contract refuses them.
    if not are_rows_of_numbers(data):
        raise InvalidRows("The data must be rows of numbers.")
    try:
        return np.asarray(data, dtype=np.float64)
    except OverflowError:
        raise InvalidRows(TOO_LARGE) from None
    except ValueError:
        raise InvalidRows("Every row must have the same number of values.") from None


_NUMBER_TYPES: Final = frozenset({int, float})


def are_numbers(values: Iterable[Any]) -> bool:
    """Whether every value is an int or a float (a bool is neither, here). The types are
    gathered in C: a loop of isinstance calls costs more than scoring a 1,000-row batch."""
    return set(map(type, values)) <= _NUMBER_TYPES


def are_rows_of_numbers(data: Any) -> bool:
    """Whether `data` is a list of lists of numbers (of any lengths)."""
    return (
        isinstance(data, list)
        and set(map(type, data)) <= {list}
        and are_numbers(itertools.chain.from_iterable(data))
    )
