"""The HTTP contract, through FastAPI's httpx.Client, with a real model trained in conftest."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from iris_predictor.app import create_app
from iris_predictor.config import PredictorSettings
from iris_predictor.inference import LoadedModel
from iris_predictor.webhooks import sign

Serve = Callable[[FastAPI], AbstractContextManager[httpx.Client]]

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for what the recorder thread does just after an answer."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


def test_predict_one_flower(client: httpx.Client) -> None:
    response = client.post("/predict", json=SETOSA)
    assert response.status_code == 200
    body = response.json()
    assert body["predicted_species"] == "Iris-setosa"
    assert body["model_version"] == "7"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert set(body["probabilities"]) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert max(body["probabilities"], key=body["probabilities"].get) == "Iris-setosa"


def test_integers_are_measurements_too(client: httpx.Client) -> None:
    flower = {"sepal_length": 5, "sepal_width": 3, "petal_length": 1, "petal_width": 1}
    assert client.post("/predict", json=flower).status_code == 200


def test_typo_names_both_fields(client: httpx.Client) -> None:
    flower = {**SETOSA}
    flower["petal--width"] = flower.pop("petal_width")
    response = client.post("/predict", json=flower)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_error"
    fields = {problem["field"] for problem in body["detail"]}
    assert fields == {"petal_width", "petal--width"}


@pytest.mark.parametrize(
    "value", ["5.1", True, None, float("nan"), -1.0, 0, 50.5, 1e308, [], {"cm": 5}]
)
def test_bad_values_are_400(client: httpx.Client, value: object) -> None:
    content = json.dumps({**SETOSA, "sepal_length": value})
    response = client.post(
        "/predict", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"


def test_batch_keeps_order_and_limit(client: httpx.Client) -> None:
    response = client.post("/predict/batch", json={"instances": [VIRGINICA, SETOSA, VIRGINICA]})
    assert response.status_code == 200
    species = [p["predicted_species"] for p in response.json()["predictions"]]
    assert species == ["Iris-virginica", "Iris-setosa", "Iris-virginica"]

    too_many = client.post("/predict/batch", json={"instances": [SETOSA] * 51})
    assert too_many.status_code == 413
    assert too_many.json()["error"] == "payload_too_large"
    assert client.post("/predict/batch", json={"instances": []}).status_code == 400


def test_model_describes_the_served_version(client: httpx.Client) -> None:
    body = client.get("/model").json()
    assert body["name"] == "Iris-LogisticRegression"
    assert body["version"] == "7"
    assert body["alias"] == "production"
    assert body["source"] == "registry"
    assert body["metrics"] == {"accuracy": 0.97}


def test_metrics_count_predictions(client: httpx.Client) -> None:
    client.post("/predict", json=SETOSA)
    text = client.get("/metrics").text
    assert 'iris_predictions_total{model_version="7",species="Iris-setosa"} 1.0' in text
    assert 'iris_model_info{alias="production",name="Iris-LogisticRegression",version="7"} 1.0' in (
        text
    )
    assert "iris_model_ready 1.0" in text
    assert 'http_request_duration_seconds_bucket{handler="/predict",le="0.0025"' in text
    eventually(
        lambda: (
            'iris_feature_value_cm_bucket{feature="petal_width",le="0.5"} 1.0'
            in client.get("/metrics").text
        )
    )


def test_prediction_log_gets_a_line_per_request_with_its_id(
    settings: PredictorSettings, client: httpx.Client
) -> None:
    one = client.post("/predict", json=SETOSA, headers={"X-Request-ID": "unit-req-1"}).json()
    batch = client.post("/predict/batch", json={"instances": [SETOSA, VIRGINICA]}).json()
    log = settings.prediction_log_dir / "predictions.jsonl"

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    eventually(lambda: len(lines()) == 2)
    single, rows = lines()
    assert (single["request_id"], single["trace_id"]) == (one["request_id"], "unit-req-1")
    assert single["rows"] == 1
    assert single["inputs"] == {name: [value] for name, value in SETOSA.items()}
    assert single["predicted_species"] == ["Iris-setosa"]
    assert single["model_version"] == "7"
    assert single["probabilities"]["Iris-setosa"][0] > 0.5
    assert (rows["request_id"], rows["trace_id"]) == (batch["request_id"], None)
    assert rows["rows"] == 2
    assert rows["predicted_species"] == ["Iris-setosa", "Iris-virginica"]
    assert rows["inputs"]["petal_length"] == [SETOSA["petal_length"], VIRGINICA["petal_length"]]


def test_no_model_yet_is_503_with_the_envelope(settings: PredictorSettings, serve: Serve) -> None:
    # MLflow at 127.0.0.1:1 refuses connections and the cache is empty: nothing to serve.
    with serve(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        response = client.post("/predict", json=SETOSA)
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "model_not_ready"
        assert "Iris-LogisticRegression@production" in body["message"]
        assert client.get("/model").status_code == 503
        assert "iris_model_ready 0.0" in client.get("/metrics").text


def test_webhook_needs_a_valid_signature(client: httpx.Client) -> None:
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": "Iris-LogisticRegression", "alias": "production", "version": "8"},
        }
    ).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": timestamp,
    }
    good = sign("s3cret", "d-1", timestamp, body)
    accepted = client.post(
        "/webhooks/mlflow", content=body, headers={**headers, "X-MLflow-Signature": good}
    )
    assert accepted.status_code == 200
    assert accepted.json() == {"status": "accepted"}
    forged = client.post(
        "/webhooks/mlflow", content=body, headers={**headers, "X-MLflow-Signature": "v1,AAAA"}
    )
    assert forged.status_code == 401
    assert forged.json()["error"] == "invalid_signature"
    huge = "9" * 5000
    malformed = client.post(
        "/webhooks/mlflow",
        content=body,
        headers={**headers, "X-MLflow-Timestamp": huge, "X-MLflow-Signature": good},
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "invalid_timestamp"


def test_webhook_route_absent_without_a_secret(tmp_path: Path, serve: Serve) -> None:
    settings = PredictorSettings(
        mlflow_tracking_uri="http://127.0.0.1:1",
        cache_dir=tmp_path / "cache",
        prediction_log_dir=tmp_path / "logs",
    )
    with serve(create_app(settings)) as client:
        assert client.post("/webhooks/mlflow", json={}).status_code == 404


def test_openapi_documents_the_envelope_and_examples(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert predict["summary"] == "Predict the species of one flower from its four measurements."
    assert {"400", "413", "415", "503"} <= set(predict["responses"])
    request_schema = schema["components"]["schemas"]["PredictionRequest"]
    assert request_schema["examples"][0]["sepal_length"] == 5.1
    assert "/predict/batch" in schema["paths"]


def test_a_numpy_scorer_that_does_not_match_is_reported_not_silent(
    settings: PredictorSettings, loaded_model: LoadedModel, serve: Serve
) -> None:
    pipeline = loaded_model.model
    own = pipeline.predict_proba
    # As if scikit-learn changed how it computes: one ulp off everywhere.
    pipeline.predict_proba = lambda rows: np.nextafter(own(rows), 1.0)
    try:
        drifted = replace(loaded_model, model=pipeline)
        with serve(create_app(settings, model_source=drifted)) as client:
            described = client.get("/model").json()
            answered = client.post("/predict", json=SETOSA)
            metrics = client.get("/metrics").text
    finally:
        del pipeline.predict_proba

    assert described["scorer"] == "scikit-learn"
    assert "differ by up to" in described["scorer_mismatch"]
    assert answered.status_code == 200
    assert 'iris_model_scorer_mismatch{alias="production"} 1.0' in metrics


def test_the_served_models_scorer_is_described(client: httpx.Client) -> None:
    described = client.get("/model").json()

    assert (described["scorer"], described["scorer_mismatch"]) == ("numpy", None)
