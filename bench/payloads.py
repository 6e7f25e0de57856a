"""The request bodies: one flower, and a batch of real iris rows, in the predictor's shape and
in the two JSON shapes `mlflow models serve` accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sklearn.datasets import load_iris

from iris_shared.schemas import FEATURE_NAMES

FLOWER: dict[str, float] = {
    "sepal_length": 5.1,
    "sepal_width": 3.5,
    "petal_length": 1.4,
    "petal_width": 0.2,
}
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records")


def iris_flowers(count: int) -> list[dict[str, float]]:
    """`count` real flowers, cycling through the 150 of the classic data set."""
    rows = load_iris().data.tolist()
    return [
        dict(zip(FEATURE_NAMES, (float(v) for v in rows[i % len(rows)]), strict=True))
        for i in range(count)
    ]


def predictor_batch(flowers: list[dict[str, float]]) -> dict[str, Any]:
    return {"instances": flowers}


def mlflow_body(flowers: list[dict[str, float]], shape: str) -> dict[str, Any]:
    # The model was logged with the training frame's columns: the same four names.
    if shape == "dataframe_split":
        rows = [[flower[name] for name in FEATURE_NAMES] for flower in flowers]
        return {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": rows}}
    if shape == "dataframe_records":
        return {"dataframe_records": flowers}
    raise ValueError(f"unknown MLflow input shape {shape!r}")


def write_body(folder: Path, name: str, body: dict[str, Any]) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(body, separators=(",", ":")))
    return path
