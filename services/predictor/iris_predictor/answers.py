"""Answers to JSON, encoded once, without an intermediate object per row where it counts.

A 1,000-row batch answer is 1,000 objects of the shared `BatchPrediction` shape, whose text
differs only in the species and the probabilities. orjson writes all the probabilities of a
batch at once from the array, in C; `batch` splices their texts between the parts every
prediction shares (made once per set of classes), with list slices, also in C: no dict or
struct is built per prediction. services/predictor/tests/test_answers.py holds the result to
the same answer built as objects.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import orjson


def one(
    probabilities: np.ndarray, classes: tuple[str, ...], version: str, request_id: str
) -> bytes:
    """A `PredictionResponse` for the single row of `probabilities`."""
    row = probabilities[0]
    return orjson.dumps(
        {
            "predicted_species": classes[int(row.argmax())],
            "probabilities": dict(zip(classes, row.tolist(), strict=True)),
            "model_version": version,
            "request_id": request_id,
        }
    )


@lru_cache(maxsize=8)
def _prediction_parts(classes: tuple[str, ...]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The text of a prediction around its probabilities: for each species, how a prediction
    of it begins (up to the first probability); and what follows each probability."""
    keys = [orjson.dumps(name) + b":" for name in classes]
    heads = tuple(
        b'{"predicted_species":' + orjson.dumps(name) + b',"probabilities":{' + keys[0]
        for name in classes
    )
    return heads, (*(b"," + key for key in keys[1:]), b"}},")


def batch(
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    version: str,
    request_id: str,
    feedback_rows: int,
) -> bytes:
    """A `BatchPredictionResponse`: one prediction per row, in order."""
    rows, width = probabilities.shape
    heads, follows = _prediction_parts(classes)
    # Row by row, each probability as orjson writes a float64 (never with a comma in it): a
    # float32 would be written as its shortest float32 text, another number than it holds.
    flat = probabilities.ravel().astype(np.float64, copy=False)
    numbers = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    texts = numbers[1:-1].split(b",")
    step = 2 * width + 1
    parts = [b""] * (rows * step)
    parts[0::step] = [heads[i] for i in probabilities.argmax(axis=1).tolist()]
    for column in range(width):
        parts[1 + 2 * column :: step] = texts[column::width]
        parts[2 + 2 * column :: step] = [follows[column]] * rows
    parts[0] = b'{"predictions":[' + parts[0]
    # The last prediction has no comma after it; then the rest of the answer.
    tail = {"model_version": version, "request_id": request_id, "feedback_rows": feedback_rows}
    parts[-1] = b"}}]," + orjson.dumps(tail)[1:]
    return b"".join(parts)
