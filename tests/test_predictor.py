"""The predictor as a real process against a real MLflow server: contract, hot swap, local copy."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from mlflow import MlflowClient

from tests.support.core import run_cli
from tests.support.predictor import PredictorService, start_predictor, wait_ready
from tests.support.processes import ManagedProcess, start_mlflow, wait_until

pytestmark = [pytest.mark.integration]

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
VERSICOLOR = {"sepal_length": 5.9, "sepal_width": 2.8, "petal_length": 4.3, "petal_width": 1.3}
MODEL = "Iris-LogisticRegression"


def post_raw(url: str, content: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(url, content=content, headers={"Content-Type": content_type}, timeout=30)


def assert_envelope(response: httpx.Response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"}
    if error is not None:
        assert body["error"] == error
    return body


# --- the contract, on the shared registry (v1 in production) -------------------------------


def test_predicts_setosa(predictor_url: str) -> None:
    response = httpx.post(f"{predictor_url}/predict", json=SETOSA)
    assert response.status_code == 200
    body = response.json()
    assert body["predicted_species"] == "Iris-setosa"
    assert body["model_version"] == "1"
    assert set(body["probabilities"]) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert response.headers["X-Request-ID"]


def test_typo_names_the_missing_and_the_unknown_field(predictor_url: str) -> None:
    flower = {**SETOSA}
    flower["petal--width"] = flower.pop("petal_width")
    body = assert_envelope(
        httpx.post(f"{predictor_url}/predict", json=flower), 400, "validation_error"
    )
    assert "petal_width" in body["message"]
    assert "petal--width" in body["message"]
    assert {p["field"] for p in body["detail"]} == {"petal_width", "petal--width"}


@pytest.mark.parametrize(
    "document",
    [
        '{"sepal_length": "5.1", "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": true, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": null, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": NaN, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": Infinity, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": -5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": 0, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": 51, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": 1e999, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, '
        '"colour": "blue"}',
        '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}',
        '{"sepal_length": [5.1], "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        "[]",
        "{}",
        '"flower"',
    ],
)
def test_invalid_values_are_400(predictor_url: str, document: str) -> None:
    assert_envelope(post_raw(f"{predictor_url}/predict", document.encode()), 400)


def test_malformed_json_is_400(predictor_url: str) -> None:
    body = assert_envelope(
        post_raw(f"{predictor_url}/predict", b'{"sepal_length": 5.1,'), 400, "malformed_json"
    )
    assert "JSON" in body["message"]


def test_wrong_content_type_is_415(predictor_url: str) -> None:
    response = post_raw(f"{predictor_url}/predict", b"sepal_length=5.1", "text/plain")
    assert_envelope(response, 415, "unsupported_media_type")


def test_body_too_big_is_413(predictor_url: str) -> None:
    big = b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    assert_envelope(post_raw(f"{predictor_url}/predict", big), 413, "payload_too_large")


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"sepal_length": ' + b"9" * 5000 + b"}",
        bytes(range(256)) * 64,
        b"\xff\xfe\x00\x00garbage",
        b"",
    ],
    ids=["nested-arrays", "nested-objects", "huge-integer", "binary", "bad-utf8", "empty"],
)
def test_hostile_bodies_are_4xx_not_5xx(predictor_url: str, content: bytes) -> None:
    for path in ("/predict", "/predict/batch"):
        response = post_raw(f"{predictor_url}{path}", content)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert_envelope(response, response.status_code)
    assert httpx.get(f"{predictor_url}/healthz").status_code == 200


def test_batch_keeps_input_order(predictor_url: str) -> None:
    flowers = [VIRGINICA, SETOSA, VERSICOLOR, SETOSA, VIRGINICA]
    response = httpx.post(f"{predictor_url}/predict/batch", json={"instances": flowers})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "1"
    assert [p["predicted_species"] for p in body["predictions"]] == [
        "Iris-virginica",
        "Iris-setosa",
        "Iris-versicolor",
        "Iris-setosa",
        "Iris-virginica",
    ]
    for prediction in body["predictions"]:
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_batch_row_limit(predictor_url: str) -> None:
    full = httpx.post(
        f"{predictor_url}/predict/batch", json={"instances": [SETOSA] * 10_000}, timeout=60
    )
    assert full.status_code == 200, full.text
    assert len(full.json()["predictions"]) == 10_000
    over = httpx.post(
        f"{predictor_url}/predict/batch", json={"instances": [SETOSA] * 10_001}, timeout=60
    )
    body = assert_envelope(over, 413)
    assert "10000" in body["message"]
    bad_row = httpx.post(
        f"{predictor_url}/predict/batch", json={"instances": [SETOSA, {**SETOSA, "x": 1}]}
    )
    body = assert_envelope(bad_row, 400, "validation_error")
    assert body["detail"][0]["field"] == "instances.1.x"


def test_model_describes_the_served_version(predictor_url: str) -> None:
    body = httpx.get(f"{predictor_url}/model").json()
    assert body["name"] == MODEL
    assert body["version"] == "1"
    assert body["alias"] == "production"
    assert body["source"] == "registry"
    assert re.fullmatch(r"[0-9a-f]{32}", body["run_id"])
    assert re.fullmatch(r"[0-9a-f]{32}", body["data_md5"])
    assert 0.8 <= body["metrics"]["accuracy"] <= 1.0
    assert "f1_macro" in body["metrics"]
    assert body["loaded_at"]
    ready = httpx.get(f"{predictor_url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "1"


def test_metrics_expose_model_and_http_series(predictor_url: str) -> None:
    httpx.post(f"{predictor_url}/predict", json=SETOSA)
    text = httpx.get(f"{predictor_url}/metrics").text
    assert re.search(
        r'^iris_predictions_total\{model_version="1",species="Iris-setosa"\} [1-9]', text, re.M
    )
    assert 'iris_model_info{alias="production",name="Iris-LogisticRegression",version="1"} 1.0' in (
        text
    )
    assert "iris_model_ready 1.0" in text
    # At least the start-up load; other suites' promotions on the shared registry add more.
    reloads = re.search(r"^iris_model_reloads_total (\S+)$", text, re.M)
    assert reloads, "iris_model_reloads_total missing"
    assert float(reloads.group(1)) >= 1
    assert "iris_model_reload_failures_total" in text
    assert 'iris_feature_value_cm_bucket{feature="sepal_length",le="5.5"}' in text
    assert re.search(
        r'^http_request_duration_seconds_bucket\{handler="/predict",le="0.005",method="POST"\}',
        text,
        re.M,
    )
    assert re.search(
        r'^http_requests_total\{handler="/predict",method="POST",status="2xx"\}', text, re.M
    )
    assert "process_resident_memory_bytes" in text


def test_prediction_log_has_a_line_per_prediction(
    predictor_url: str, predictor_service: PredictorService
) -> None:
    request_id = f"test-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{predictor_url}/predict", json=VIRGINICA, headers={"X-Request-ID": request_id}
    )
    assert response.headers["X-Request-ID"] == request_id
    log = predictor_service.prediction_log_dir / "predictions.jsonl"

    def ours() -> list[dict]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) for line in lines if request_id in line]

    wait_until(lambda: len(ours()) == 1, 10, "prediction log line")
    [line] = ours()
    assert line["inputs"] == VIRGINICA
    assert line["prediction"] == "Iris-virginica"
    assert line["model_version"] == "1"
    assert set(line["probabilities"]) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert line["latency_ms"] >= 0
    assert line["time"]


def test_no_production_model_yet(trained_registry: str, logs_dir: Path) -> None:
    process, url = start_predictor(logs_dir, trained_registry, PREDICTOR_MODEL_NAME="Iris-Nothing")
    try:
        time.sleep(2)  # a couple of polls: still waiting, still alive, no error
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert_envelope(httpx.get(f"{url}/readyz"), 503, "model_not_ready")
        body = assert_envelope(httpx.post(f"{url}/predict", json=SETOSA), 503, "model_not_ready")
        assert "Iris-Nothing" in body["message"]
        assert "production" in body["message"]
        assert_envelope(httpx.post(f"{url}/predict/batch", json={"instances": [SETOSA]}), 503)
        assert_envelope(httpx.get(f"{url}/model"), 503, "model_not_ready")
        assert "iris_model_ready 0.0" in httpx.get(f"{url}/metrics").text
        assert process.popen.poll() is None
    finally:
        process.stop()


# --- state-changing tests, on a registry of their own --------------------------------------


@pytest.fixture(scope="module")
def private_registry(
    logs_dir: Path, tmp_path_factory: pytest.TempPathFactory, data_ready: Path
) -> Iterator[tuple[ManagedProcess, str]]:
    """An MLflow server only this module uses (its tests move aliases and stop it).

    Webhooks are enabled: a local http receiver, a secret, a 1 s webhook cache.
    """
    process, uri = start_mlflow(
        logs_dir / "predictor-mlflow",
        tmp_path_factory.mktemp("predictor-mlflow"),
        env={
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        },
    )
    try:
        run_cli("train", "--no-write-reports", tracking_uri=uri)
        yield process, uri
    finally:
        process.stop()


def trained_version(stdout: str, model: str = MODEL) -> str:
    match = re.search(rf"^{re.escape(model)} v(\d+):", stdout, re.M)
    assert match, stdout
    return match.group(1)


def test_hot_swap_without_a_failed_request(
    private_registry: tuple[ManagedProcess, str], logs_dir: Path
) -> None:
    _, uri = private_registry
    process, url = start_predictor(logs_dir, uri)
    stop = threading.Event()
    results: list[tuple[int, str | None]] = []

    def fire() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.post("/predict", json=VERSICOLOR)
                    version = response.json().get("model_version")
                    results.append((response.status_code, version))
                except httpx.HTTPError as exc:
                    results.append((0, repr(exc)))

    threads = [threading.Thread(target=fire) for _ in range(2)]
    try:
        # Train before the load starts: on two cores, training under load would crawl.
        trained = run_cli(
            "train",
            "--no-write-reports",
            "--set",
            "models.logistic_regression.C=0.5",
            tracking_uri=uri,
        )
        new_version = trained_version(trained.stdout)
        assert new_version != "1"
        wait_ready(process, url)
        assert httpx.get(f"{url}/model").json()["version"] == "1"
        for thread in threads:
            thread.start()
        wait_until(lambda: len(results) > 10, 10, "requests before the promotion", process)
        run_cli("promote", new_version, "--model", MODEL, tracking_uri=uri)
        # Polling every second: a few seconds even on a busy machine.
        wait_until(
            lambda: any(v == new_version for _, v in results[-20:]),
            10,
            f"predictions from v{new_version}",
            process,
        )
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        process.stop()
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    assert {v for _, v in results} == {"1", new_version}
    assert results[-1][1] == new_version
    assert len(results) > 20


def test_webhook_triggers_an_immediate_check(
    private_registry: tuple[ManagedProcess, str], logs_dir: Path
) -> None:
    """With a 2-minute poll, only the webhook delivery can make the swap this quick."""
    _, uri = private_registry
    secret = uuid.uuid4().hex
    process, url = start_predictor(
        logs_dir, uri, PREDICTOR_POLL_INTERVAL_S="120", PREDICTOR_WEBHOOK_SECRET=secret
    )
    client = MlflowClient(uri)
    webhook = client.create_webhook(
        name=f"predictor-{uuid.uuid4().hex[:8]}",
        url=f"{url}/webhooks/mlflow",
        events=["model_version_alias.created"],
        secret=secret,
    )
    try:
        wait_ready(process, url)
        served = httpx.get(f"{url}/model").json()["version"]
        # A new version of the same artefacts: no training needed to have something to promote.
        source = client.get_model_version(MODEL, served)
        new_version = str(
            client.create_model_version(
                MODEL,
                source.source,
                run_id=source.run_id,
                # The REST API wants the logged model's id, which the version does not echo.
                model_id=source.model_id or source.source.removeprefix("models:/"),
            ).version
        )
        time.sleep(1.5)  # let the server's webhook cache (1 s) see the new webhook
        run_cli("promote", new_version, "--model", MODEL, tracking_uri=uri)
        wait_until(
            lambda: httpx.get(f"{url}/model").json()["version"] == new_version,
            20,
            f"v{new_version} after the webhook",
            process,
        )
        assert "Alias moved; checking now" in process.log_path.read_text()
    finally:
        client.delete_webhook(webhook.webhook_id)
        process.stop()


def test_restart_with_mlflow_down_serves_the_local_copy(
    private_registry: tuple[ManagedProcess, str], logs_dir: Path
) -> None:
    """Runs last in this module: it stops the module's MLflow server."""
    mlflow_process, uri = private_registry
    process, url = start_predictor(logs_dir, uri)
    try:
        wait_ready(process, url)
        served = httpx.get(f"{url}/model").json()
        assert served["source"] == "registry"
        process.stop()
        mlflow_process.stop()

        process.restart()  # same port, same cache folder
        wait_ready(process, url, timeout=30)
        response = httpx.post(f"{url}/predict", json=SETOSA)
        assert response.status_code == 200
        assert response.json()["model_version"] == served["version"]
        body = httpx.get(f"{url}/model").json()
        assert body["source"] == "local-cache"
        assert body["version"] == served["version"]
        assert body["run_id"] == served["run_id"]
        assert body["metrics"] == served["metrics"]
        warnings = [
            json.loads(line)
            for line in process.log_path.read_text().splitlines()
            if "Serving the local copy of the model" in line
        ]
        assert warnings
        assert warnings[-1]["level"] == "WARNING"
        assert warnings[-1]["version"] == served["version"]
    finally:
        process.stop()
