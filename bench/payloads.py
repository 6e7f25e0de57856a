"""The request bodies: one flower, and a batch of real iris rows, in the predictor's shape and
in the shapes each peer and protocol takes: MLflow's JSON and CSV, V2 JSON and binary, BentoML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
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


def _matrix(flowers: list[dict[str, float]]) -> list[list[float]]:
    return [[flower[name] for name in FEATURE_NAMES] for flower in flowers]


def v2_json_body(flowers: list[dict[str, float]]) -> dict[str, Any]:
    """An Open Inference Protocol V2 request as MLServer's docs write one: one `[n, 4]` FP64
    tensor, data flat, no `outputs` (each server answers its default outputs)."""
    data = [value for row in _matrix(flowers) for value in row]
    tensor = {"name": "input-0", "shape": [len(flowers), 4], "datatype": "FP64", "data": data}
    return {"inputs": [tensor]}


def v2_binary_body(flowers: list[dict[str, float]]) -> tuple[bytes, int]:
    """A V2 request in the binary tensor extension, as tritonclient sends one for a float32
    array with binary outputs: the JSON header, then the raw little-endian tensor. Returns the
    body and the header's length (the Inference-Header-Content-Length value)."""
    tensor = np.asarray(_matrix(flowers), dtype="<f4")
    header = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(tensor.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": tensor.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + tensor.tobytes(), len(encoded)


def bentoml_body(flowers: list[dict[str, float]]) -> dict[str, Any]:
    """BentoML's JSON API names the method's parameters: `input_series`, an `[n, 4]` array."""
    return {"input_series": _matrix(flowers)}


def mlflow_csv(flowers: list[dict[str, float]]) -> str:
    """`text/csv` for /invocations: a header row with the column names, one flower a line."""
    lines = [",".join(FEATURE_NAMES)]
    lines += [",".join(repr(value) for value in row) for row in _matrix(flowers)]
    return "\n".join(lines) + "\n"


def write_raw(folder: Path, name: str, body: bytes | str) -> Path:
    path = folder / name
    if isinstance(body, str):
        path.write_text(body)
    else:
        path.write_bytes(body)
    return path
