"""The batch answer is spliced from text (iris_predictor.answers): whatever the probabilities,
the classes and the ids, it must be the JSON the shared contract describes, value for value, as
orjson writes the same answer built as objects."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from iris_predictor import answers
from iris_shared.schemas import BatchPredictionResponse

# Names a model's classes could have, escapes and non-ASCII included.
CLASS_NAME = st.text(min_size=1, max_size=12)
PROBABILITY = st.floats(min_value=0.0, max_value=1.0, allow_subnormal=True)


def as_objects(
    probabilities: np.ndarray, classes: tuple[str, ...], version: str, request_id: str, rows: int
) -> dict[str, Any]:
    return {
        "predictions": [
            {
                "predicted_species": classes[int(row.argmax())],
                "probabilities": dict(zip(classes, row.tolist(), strict=True)),
            }
            for row in probabilities
        ],
        "model_version": version,
        "request_id": request_id,
        "feedback_rows": rows,
    }


@st.composite
def batch_answers(draw: st.DrawFn) -> tuple[np.ndarray, tuple[str, ...], str, str, int]:
    classes = tuple(draw(st.lists(CLASS_NAME, min_size=2, max_size=5, unique=True)))
    rows = draw(st.integers(min_value=1, max_value=40))
    probabilities = draw(arrays(np.float64, (rows, len(classes)), elements=PROBABILITY))
    return probabilities, classes, draw(st.text()), draw(st.text()), draw(st.integers(0, rows))


@settings(max_examples=300, deadline=None)
@given(batch_answers())
def test_the_spliced_answer_is_the_answer_built_as_objects(
    answer: tuple[np.ndarray, tuple[str, ...], str, str, int],
) -> None:
    probabilities, classes, version, request_id, feedback_rows = answer
    body = answers.batch(probabilities, classes, version, request_id, feedback_rows)

    expected = as_objects(probabilities, classes, version, request_id, feedback_rows)
    # Parsed by two parsers, every float exact, every key in its place and order.
    assert json.loads(body) == expected
    assert list(json.loads(body)["predictions"][0]["probabilities"]) == list(classes)
    assert orjson.loads(body) == orjson.loads(orjson.dumps(expected))
    BatchPredictionResponse.model_validate_json(body)


def test_a_real_batch_reads_back_exactly() -> None:
    classes = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(1000, 3)) * 8
    probabilities = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    probabilities[0] = [1.0, 0.0, 0.0]
    probabilities[1] = [5e-324, 1e-300, 1.0 - 1e-16]

    body = answers.batch(probabilities, classes, "7", "req-1", 100)

    assert json.loads(body) == as_objects(probabilities, classes, "7", "req-1", 100)
    # Single precision too: each value as the float it holds, not its shortest float32 text.
    single = probabilities.astype(np.float32)
    body = answers.batch(single, classes, "7", "req-1", 100)
    assert json.loads(body) == as_objects(single, classes, "7", "req-1", 100)
