"""Answers to JSON, encoded once, without an intermediate object per row where it counts.

A 1,000-row batch answer is 1,000 objects of the shared `BatchPrediction` shape. Building them
as dicts and encoding those costs more than scoring the rows; msgspec structs with the same
field names (the species of the model as the keys of `probabilities`) encode to the same JSON
in about half the time. The structs are made once per set of classes a model has, untracked
by the garbage collector (they hold strings and floats only, so never a cycle): a thousand
tracked objects per answer would each count towards a collection.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import starmap
from typing import Any

import msgspec
import numpy as np
import orjson

_encode = msgspec.json.Encoder().encode


@lru_cache(maxsize=8)
def _prediction_struct(classes: tuple[str, ...]) -> tuple[Any, Any]:
    probabilities = msgspec.defstruct(
        "Probabilities",
        [(f"p{i}", float, msgspec.field(name=name)) for i, name in enumerate(classes)],
        gc=False,
    )
    prediction = msgspec.defstruct(
        "BatchPrediction",
        [("predicted_species", str), ("probabilities", probabilities)],
        gc=False,
    )
    return prediction, probabilities


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


def batch(
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    version: str,
    request_id: str,
    feedback_rows: int,
) -> bytes:
    """A `BatchPredictionResponse`: one prediction per row, in order."""
    prediction, probability_set = _prediction_struct(classes)
    labels = [classes[index] for index in probabilities.argmax(axis=1).tolist()]
    predictions = list(map(prediction, labels, starmap(probability_set, probabilities.tolist())))
    return _encode(
        {
            "predictions": predictions,
            "model_version": version,
            "request_id": request_id,
            "feedback_rows": feedback_rows,
        }
    )
