"""The hot path's decoder accepts exactly what the shared pydantic contract accepts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from iris_predictor import inputs
from iris_shared.schemas import FEATURE_NAMES, BatchPredictionRequest, PredictionRequest

FLOWER = dict(zip(FEATURE_NAMES, (5.1, 3.5, 1.4, 0.2), strict=True))

measurement = st.one_of(
    st.floats(min_value=0.001, max_value=50.0),  # valid
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.just([5.1]),
)
flower_document = st.fixed_dictionaries(
    {},
    optional={name: measurement for name in FEATURE_NAMES}
    | {"colour": st.text(max_size=3), "petal--width": measurement},
)


def contract_rows(adapter: TypeAdapter[Any], body: bytes) -> np.ndarray | None:
    try:
        validated = adapter.validate_json(body)
    except ValidationError:
        return None
    flowers = validated.instances if hasattr(validated, "instances") else [validated]
    return np.array([flower.as_row() for flower in flowers], dtype=np.float64)


def decoded_rows(decode: Any, body: bytes) -> np.ndarray | None:
    try:
        return np.asarray(decode(body))
    except RequestValidationError:
        return None


@settings(max_examples=150, deadline=None)
@given(flower_document)
def test_one_flower_accepts_what_the_contract_accepts(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    expected = contract_rows(TypeAdapter(PredictionRequest), body)
    got = decoded_rows(inputs.one_flower, body)
    if expected is None:
        assert got is None, document
    else:
        assert got is not None, document
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=75, deadline=None)
@given(st.lists(flower_document | st.just(FLOWER), min_size=0, max_size=4))
def test_a_batch_accepts_what_the_contract_accepts(instances: list[dict[str, Any]]) -> None:
    body = json.dumps({"instances": instances}).encode()
    expected = contract_rows(TypeAdapter(BatchPredictionRequest), body)
    got = decoded_rows(lambda b: inputs.batch_of_flowers(b, max_rows=10), body)
    if expected is None:
        assert got is None, instances
    else:
        assert got is not None, instances
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "body",
    [
        b'{"sepal_length": 1, "sepal_length": 2, "sepal_width": 3.5, "petal_length": 1.4, '
        b'"petal_width": 0.2}',
        b'{"sepal_length": 5, "sepal_width": 3, "petal_length": 1, "petal_width": 1}',
        b'{"sepal_length": 5.1e0, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
    ],
    ids=["duplicate-key", "integers", "exponent"],
)
def test_edge_cases_agree_with_the_contract(body: bytes) -> None:
    expected = contract_rows(TypeAdapter(PredictionRequest), body)
    assert expected is not None
    np.testing.assert_array_equal(inputs.one_flower(body), expected)


def test_a_refusal_names_the_fields_as_fastapi_would() -> None:
    flower = {**FLOWER, "petal--width": FLOWER["petal_width"]}
    del flower["petal_width"]
    with pytest.raises(RequestValidationError) as refused:
        inputs.one_flower(json.dumps(flower).encode())
    locations = {error["loc"] for error in refused.value.errors()}
    assert locations == {("body", "petal_width"), ("body", "petal--width")}


def test_rows_beyond_the_limit_are_refused_before_parsing() -> None:
    body = json.dumps({"instances": [FLOWER] * 11}).encode()
    with pytest.raises(inputs.TooManyRows, match="11 rows; the limit is 10"):
        inputs.batch_of_flowers(body, max_rows=10)
    # Counting comes first: even a body that is not JSON past the rows is refused for its size.
    with pytest.raises(inputs.TooManyRows):
        inputs.batch_of_flowers(b"{" * 50, max_rows=10)


def outcome(decode: Any, body: bytes) -> np.ndarray | RequestValidationError:
    """The rows, or the refusal; any other exception (a 500) escapes and fails the test."""
    try:
        return np.asarray(decode(body))
    except RequestValidationError as refusal:
        return refusal


def decoders() -> dict[str, Any]:
    return {
        "one": inputs.one_flower,
        "batch": lambda body: inputs.batch_of_flowers(body, max_rows=10**6),
    }


invalid_utf8 = st.sampled_from([b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"])


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), kind=st.sampled_from(["one", "batch"]))
def test_any_bytes_give_rows_or_a_refusal(body: bytes, kind: str) -> None:
    outcome(decoders()[kind], body)


@settings(max_examples=200, deadline=None)
@given(
    document=flower_document | st.builds(lambda flower: {"instances": [flower]}, flower_document),
    bad=invalid_utf8,
    data=st.data(),
)
def test_bytes_that_are_not_utf8_are_malformed_json_wherever_they_are(
    document: dict[str, Any], bad: bytes, data: st.DataObject
) -> None:
    body = json.dumps(document).encode()
    # Inside a key or a string (right after an opening quote), or between any two bytes.
    quotes = [at + 1 for at, byte in enumerate(body) if byte == ord('"')]
    anywhere = st.integers(0, len(body))
    at = data.draw(st.sampled_from(quotes) | anywhere if quotes else anywhere)
    body = body[:at] + bad + body[at:]
    for decode in decoders().values():
        refusal = outcome(decode, body)
        assert isinstance(refusal, RequestValidationError), body
        assert [error["type"] for error in refusal.errors()] == ["json_invalid"], body


def test_a_key_that_is_not_utf8_is_malformed_json() -> None:
    """msgspec raises UnicodeDecodeError for a key that is not UTF-8 (msgspec/msgspec#714)."""
    body = b'{"sepal_length\xff": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
    for decode in decoders().values():
        refusal = outcome(decode, body)
        assert isinstance(refusal, RequestValidationError)
        assert refusal.errors()[0]["type"] == "json_invalid"
