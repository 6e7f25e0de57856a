"""The predictor as a real process against a real MLflow server: contract, hot swap, local copy."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from iris_devstack.processes import (
    child_pids,
    free_port,
    proc_stat,
    tls_context,
    wait_until,
)
from iris_predictor.prediction_log import log_files
from iris_shared.schemas import FEATURE_NAMES
from tests.support.core import register_copies
from tests.support.exposition import metric_value
from tests.support.predictor import (
    PredictorService,
    start_predictor,
    wait_healthy,
    wait_ready,
)

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
    trace_id = f"test-{uuid.uuid4().hex}"
    response = httpx.post(
        f"{predictor_url}/predict", json=VIRGINICA, headers={"X-Request-ID": trace_id}
    )
    assert response.headers["X-Request-ID"] == trace_id
    request_id = response.json()["request_id"]

    def ours() -> list[dict]:
        # Each worker process writes its own file.
        lines = [
            line
            for path in log_files(predictor_service.prediction_log_dir)
            for line in path.read_text().splitlines()
        ]
        return [json.loads(line) for line in lines if request_id in line]

    wait_until(lambda: len(ours()) == 1, 10, "prediction log line")
    [line] = ours()
    assert (line["request_id"], line["trace_id"]) == (request_id, trace_id)
    assert line["inputs"] == {name: [value] for name, value in VIRGINICA.items()}
    assert line["predicted_species"] == ["Iris-virginica"]
    assert line["model_version"] == "1"
    assert set(line["probabilities"]) == {"Iris-setosa", "Iris-versicolor", "Iris-virginica"}
    assert line["latency_ms"] >= 0
    assert line["time"]


def test_answers_equal_the_registry_models_own(trained_registry: str, predictor_url: str) -> None:
    """Scoring arrays in FEATURE_NAMES order gives what MLflow's pyfunc gives on a DataFrame."""
    data = load_iris()
    frame = pd.DataFrame(data.data, columns=list(FEATURE_NAMES))
    uri = f"models:/{MODEL}/1"
    mlflow.set_tracking_uri(trained_registry)
    expected_species = mlflow.pyfunc.load_model(uri).predict(frame)
    expected_probabilities = mlflow.sklearn.load_model(uri).predict_proba(frame)

    response = httpx.post(
        f"{predictor_url}/predict/batch",
        json={"instances": frame.to_dict(orient="records")},
        timeout=30,
    )

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["predicted_species"] for p in predictions] == list(expected_species)
    classes = list(predictions[0]["probabilities"])
    got = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
    np.testing.assert_allclose(got, expected_probabilities, rtol=1e-12)


def worker_pids(service: PredictorService) -> list[int]:
    """The server's worker processes (multiprocessing also starts a resource tracker)."""
    workers = []
    for pid in child_pids(service.process.pid):
        with suppress(FileNotFoundError, ProcessLookupError):  # gone since it was listed
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return sorted(workers)


def test_metrics_are_merged_across_the_worker_processes(
    predictor_service: PredictorService,
) -> None:
    url = predictor_service.url
    assert len(worker_pids(predictor_service)) == 2
    labels = {"model_version": "1", "species": "Iris-setosa"}
    before = metric_value(httpx.get(f"{url}/metrics").text, "iris_predictions_total", **labels)

    # Separate connections from several threads, so both processes take requests.
    def post() -> int:
        return httpx.post(f"{url}/predict", json=SETOSA, verify=tls_context()).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: post(), range(60))) == {200}

    # Whichever process answers the scrape, it reports every process's counts.
    for _ in range(6):
        text = httpx.get(f"{url}/metrics").text
        assert metric_value(text, "iris_predictions_total", **labels) == before + 60
        info = [line for line in text.splitlines() if line.startswith("iris_model_info{")]
        assert info == [
            'iris_model_info{alias="production",name="Iris-LogisticRegression",version="1"} 1.0'
        ]
        assert metric_value(text, "iris_model_ready") == 1.0
        assert metric_value(text, "process_resident_memory_bytes") > 0


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_its_counts_are_kept(
    predictor_service: PredictorService,
) -> None:
    url = predictor_service.url
    for _ in range(10):
        assert httpx.post(f"{url}/predict", json=SETOSA).status_code == 200
    labels = {"model_version": "1", "species": "Iris-setosa"}
    before = metric_value(httpx.get(f"{url}/metrics").text, "iris_predictions_total", **labels)
    doomed = worker_pids(predictor_service)[0]

    os.kill(doomed, signal.SIGKILL)

    seen: list[list[int]] = []

    def replaced() -> bool:
        seen.append(worker_pids(predictor_service))
        return doomed not in seen[-1] and len(seen[-1]) == 2

    # Seen dead at once, even with a health check pending (iris_shared.server.WorkerSupervisor);
    # the replacement's start-up takes the rest.
    try:
        wait_until(replaced, 60, "a replacement worker")
    except TimeoutError:
        master = predictor_service.process.pid
        children = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in child_pids(master)
        }
        # Every spawned worker on the machine with its parent: a replacement the master logged
        # but that is not its child shows up here.
        spawned: dict[int, list[str]] = {}
        for entry in Path("/proc").glob("[0-9]*"):
            with suppress(FileNotFoundError, ProcessLookupError):
                if b"spawn_main" in (entry / "cmdline").read_bytes():
                    spawned[int(entry.name)] = proc_stat(int(entry.name))[:2]
        raise AssertionError(
            f"no replacement for worker {doomed}: workers seen {seen[:3]}...{seen[-3:]}, "
            f"children of the master {master} now {children}, spawned workers (state, parent) "
            f"{spawned}, master's log:\n{predictor_service.process.tail(15)}"
        ) from None
    wait_ready(predictor_service.process, url)
    text = httpx.get(f"{url}/metrics").text
    # Counters of the dead process stay in the totals; its live gauges are gone.
    assert metric_value(text, "iris_predictions_total", **labels) >= before
    assert metric_value(text, "iris_model_ready") == 1.0
    metric_files = os.listdir(metrics_dir(worker_pids(predictor_service)[0]))
    assert any(f"_{doomed}.db" in name for name in metric_files), "its counts were dropped"
    assert not [n for n in metric_files if n.startswith("gauge_live") and f"_{doomed}." in n]


def metrics_dir(worker_pid: int) -> Path:
    """The folder the launcher made for the workers' metric files (in their environment)."""
    environ = Path(f"/proc/{worker_pid}/environ").read_bytes().split(b"\0")
    [value] = [v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value.split(b"=", 1)[1].decode())


@pytest.mark.slow
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


# --- state-changing tests, each on a registered model of its own --------------------------


@pytest.fixture
def own_model(trained_registry: str) -> tuple[str, str]:
    """(tracking URI, name) of a model only this test serves, on the session registry: its
    version 1 is a copy of the session's servable v1, in production. The test may move its
    aliases; the session predictor serves another model and never sees them."""
    name = f"Iris-Own-{uuid.uuid4().hex[:8]}"
    [version] = register_copies(trained_registry, name, 1)
    MlflowClient(trained_registry).set_registered_model_alias(name, "production", version)
    return trained_registry, name


@pytest.mark.slow
def test_hot_swap_without_a_failed_request(own_model: tuple[str, str], logs_dir: Path) -> None:
    uri, name = own_model
    process, url = start_predictor(logs_dir, uri, wait=False, PREDICTOR_MODEL_NAME=name)
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
        # Registered while the predictor starts: a version to promote, of the same artefacts.
        [new_version] = register_copies(uri, name, 1)
        assert new_version != "1"
        wait_healthy(process, url)
        wait_ready(process, url)
        assert httpx.get(f"{url}/model").json()["version"] == "1"
        for thread in threads:
            thread.start()
        wait_until(lambda: len(results) > 10, 10, "requests before the promotion", process)
        MlflowClient(uri).set_registered_model_alias(name, "production", new_version)
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


def alias_lookups(mlflow_log: Path, name: str) -> int:
    """How many times MLflow was asked where an alias of model `name` points (its access log)."""
    return mlflow_log.read_text().count(f"/registered-models/alias?name={name}&")


@pytest.mark.slow
def test_one_worker_asks_mlflow_and_every_worker_follows_the_alias(
    own_model: tuple[str, str], logs_dir: Path
) -> None:
    """Two worker processes ask MLflow as often as one would, and both swap at once."""
    uri, name = own_model
    interval = 0.5
    process, url = start_predictor(
        logs_dir,
        uri,
        PREDICTOR_MODEL_NAME=name,
        PREDICTOR_WORKERS="2",
        PREDICTOR_POLL_INTERVAL_S=str(interval),
    )
    try:
        wait_ready(process, url)
        mlflow_log = logs_dir / "mlflow.log"
        before = alias_lookups(mlflow_log, name)
        time.sleep(20 * interval)
        # One process asks about production and the challenger once an interval: 40 lookups.
        # Each worker asking for itself would make 80.
        assert alias_lookups(mlflow_log, name) - before <= 52

        [new_version] = register_copies(uri, name, 1)
        MlflowClient(uri).set_registered_model_alias(name, "production", new_version)
        with httpx.Client(base_url=url, timeout=10) as client:
            wait_until(
                lambda: (
                    client.post("/predict", json=VERSICOLOR).json()["model_version"] == new_version
                ),
                20,
                f"a worker on v{new_version}",
                process,
            )
            # The other worker was nudged: within a few intervals, not ten.
            time.sleep(6 * interval)
            versions = Counter(
                client.post("/predict", json=VERSICOLOR).json()["model_version"] for _ in range(40)
            )
        assert versions == {new_version: 40}
    finally:
        process.stop()


@pytest.mark.slow
def test_webhook_triggers_an_immediate_check(own_model: tuple[str, str], logs_dir: Path) -> None:
    """With a 2-minute poll, only the webhook delivery can make the swap this quick."""
    uri, name = own_model
    secret = uuid.uuid4().hex
    process, url = start_predictor(
        logs_dir,
        uri,
        PREDICTOR_MODEL_NAME=name,
        PREDICTOR_POLL_INTERVAL_S="120",
        PREDICTOR_WEBHOOK_SECRET=secret,
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
        # A new version of the same artefacts: no training needed to have something to promote.
        [new_version] = register_copies(uri, name, 1)
        time.sleep(1.5)  # let the server's webhook cache (1 s) see the new webhook
        client.set_registered_model_alias(name, "production", new_version)
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


@pytest.mark.slow
def test_restart_with_mlflow_down_serves_the_local_copy(
    own_model: tuple[str, str], logs_dir: Path
) -> None:
    uri, name = own_model
    process, url = start_predictor(logs_dir, uri, PREDICTOR_MODEL_NAME=name)
    try:
        wait_ready(process, url)
        served = httpx.get(f"{url}/model").json()
        assert served["source"] == "registry"
        process.stop()

        # Same port, same cache folder; MLflow now at an address where nothing answers.
        assert process.env is not None
        process.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
        process.restart()
        wait_ready(process, url)
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


@pytest.mark.slow
def test_a_pickled_version_is_refused_and_the_served_one_stays(
    own_model: tuple[str, str], logs_dir: Path
) -> None:
    """A version saved with pickle would run code when loaded: it is reported, never loaded."""
    uri, name = own_model
    client = MlflowClient(uri)
    before = client.get_model_version_by_alias(name, "production").version
    process, url = start_predictor(logs_dir, uri, PREDICTOR_MODEL_NAME=name)
    try:
        wait_ready(process, url)
        data = load_iris()
        frame = pd.DataFrame(data.data, columns=list(FEATURE_NAMES))
        pickled = Pipeline([("classifier", LogisticRegression(max_iter=500))]).fit(
            frame, data.target
        )
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                pickled,
                name="model",
                serialization_format="cloudpickle",
                signature=infer_signature(frame, data.target),
                registered_model_name=name,
            )
        bad = str(info.registered_model_version)
        client.set_registered_model_alias(name, "production", bad)

        def reported() -> dict:
            body = httpx.get(f"{url}/model").json()
            return body if body.get("load_error") else {}

        wait_until(reported, 30, "the load error in GET /model", process)
        body = reported()
        assert body["version"] == before, "the served version changed"
        assert body["load_error"]["version"] == bad
        assert "cloudpickle" in body["load_error"]["reason"]
        assert metric_value(httpx.get(f"{url}/metrics").text, "iris_model_load_failing") == 1.0
        assert httpx.post(f"{url}/predict", json=SETOSA).json()["model_version"] == before

        client.set_registered_model_alias(name, "production", before)
        wait_until(
            lambda: httpx.get(f"{url}/model").json()["load_error"] is None,
            30,
            "the load error cleared",
            process,
        )
        assert metric_value(httpx.get(f"{url}/metrics").text, "iris_model_load_failing") == 0.0
    finally:
        client.set_registered_model_alias(name, "production", before)
        process.stop()


@pytest.mark.slow
def test_a_graceful_stop_writes_a_log_line_for_every_answer(
    trained_registry: str, logs_dir: Path
) -> None:
    """SIGTERM under load: in-flight requests finish, and each 200 has its log line."""
    process, url = start_predictor(logs_dir, trained_registry)
    wait_ready(process, url)
    stop = threading.Event()
    answered = Counter[str]()

    def fire(path: str, body: dict) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.post(path, json=body)
                except httpx.HTTPError:
                    continue  # refused or cut while the server stops: not answered
                answered[str(response.status_code)] += 1

    loads = [("/predict", SETOSA)] * 3 + [("/predict/batch", {"instances": [VIRGINICA] * 50})]
    threads = [threading.Thread(target=fire, args=load) for load in loads]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: answered["200"] > 200, 60, "load before the stop", process)
        process.popen.send_signal(signal.SIGTERM)
        process.popen.wait(timeout=60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        process.stop()

    # uvicorn re-raises the SIGTERM it handled once shut down, so the exit says "terminated".
    assert process.popen.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in process.tail()
    assert set(answered) <= {"200", "503"}, answered
    log_dir = Path(process.env["PREDICTOR_PREDICTION_LOG_DIR"]) if process.env else None
    assert log_dir is not None
    lines = sum(len(path.read_text().splitlines()) for path in log_files(log_dir))
    assert lines == answered["200"]
