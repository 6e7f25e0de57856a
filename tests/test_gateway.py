"""The gateway as a real process in front of the real predictor, Redis and MLflow."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from iris_devstack.processes import ManagedProcess, free_port, tcp_open, wait_until
from iris_devstack.redis import start_redis
from iris_shared.schemas import FEATURE_NAMES
from tests.support.core import register_copies
from tests.support.gateway import start_gateway

pytestmark = pytest.mark.integration

MODEL = "Iris-LogisticRegression"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
TYPO = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal--width": 0.2}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_predicts_setosa_through_the_gateway(gateway_url: str) -> None:
    response = httpx.post(f"{gateway_url}/predict", json=SETOSA, headers={"X-Request-ID": "e2e-1"})

    assert response.status_code == 200
    body = response.json()
    assert body["predicted_species"] == "Iris-setosa"
    assert body["probabilities"]["Iris-setosa"] > 0.5
    assert body["model_version"].isdigit()
    # The client's id traces the request through both services; the answer's id is the
    # server's own, under which feedback finds it.
    assert response.headers["X-Request-ID"] == "e2e-1"
    assert body["request_id"] != "e2e-1"
    assert len(body["request_id"]) == 32


def test_batch_and_model_match_the_predictor(gateway_url: str, predictor_url: str) -> None:
    batch = httpx.post(f"{gateway_url}/predict/batch", json={"instances": [SETOSA, SETOSA]})
    through_gateway = httpx.get(f"{gateway_url}/model")

    assert batch.status_code == 200
    assert [p["predicted_species"] for p in batch.json()["predictions"]] == ["Iris-setosa"] * 2
    assert through_gateway.status_code == 200
    # Each predictor process loaded its models at its own moment, and one may follow an
    # alias another test just moved a poll earlier than the other: all else is the same.
    wait_until(
        lambda: (
            without_load_times(httpx.get(f"{gateway_url}/model").json())
            == without_load_times(httpx.get(f"{predictor_url}/model").json())
        ),
        timeout=10,
        what="the gateway's /model and the predictor's agree",
    )


def without_load_times(model: dict[str, object]) -> dict[str, object]:
    challenger = model.get("challenger")
    if isinstance(challenger, dict):
        challenger = without_load_times(challenger)
    return {**model, "loaded_at": None, "challenger": challenger}


def test_typo_gives_the_predictors_own_400(gateway_url: str, predictor_url: str) -> None:
    through_gateway = httpx.post(f"{gateway_url}/predict", json=TYPO)
    direct = httpx.post(f"{predictor_url}/predict", json=TYPO)

    assert through_gateway.status_code == 400
    assert through_gateway.json() == direct.json()
    assert "petal_width" in through_gateway.json()["message"]
    fields = {problem["field"] for problem in through_gateway.json()["detail"]}
    assert "petal_width" in fields


def test_both_services_expose_metrics(gateway_url: str, predictor_url: str) -> None:
    httpx.post(f"{gateway_url}/predict", json=SETOSA)

    gateway = httpx.get(f"{gateway_url}/metrics").text
    predictor = httpx.get(f"{predictor_url}/metrics").text

    assert 'http_requests_total{handler="/predict",method="POST",status="2xx"}' in gateway
    assert "http_request_duration_seconds_bucket" in gateway
    # With several processes a labelled counter shows once something counted (an upstream
    # error); the unlabelled one is always there.
    assert "iris_retrain_jobs_submitted_total" in gateway
    assert "iris_predictions_total" in predictor
    assert "http_requests_total" in predictor


def test_ready_when_predictor_and_redis_are(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"predictor": "ok", "redis": "ok"}


def test_unknown_job_is_404(gateway_url: str, api_token: str) -> None:
    response = httpx.get(
        f"{gateway_url}/jobs/8a0d4e4c-0000-4000-8000-000000000000", headers=bearer(api_token)
    )

    assert response.status_code == 404
    assert response.json()["error"] == "job_not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"}])
def test_jobs_and_promote_need_the_token(gateway_url: str, headers: dict[str, str]) -> None:
    retrain = httpx.post(f"{gateway_url}/retrain", json={}, headers=headers)
    promote = httpx.post(f"{gateway_url}/promote", json={"model_version": "1"}, headers=headers)
    jobs = httpx.get(f"{gateway_url}/jobs", headers=headers)

    for response in (retrain, promote, jobs):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"


def test_promoting_an_unknown_version_is_404(gateway_url: str, api_token: str) -> None:
    response = httpx.post(
        f"{gateway_url}/promote", json={"model_version": "9999"}, headers=bearer(api_token)
    )
    unknown_model = httpx.post(
        f"{gateway_url}/promote",
        json={"model_version": "1", "model_name": "No-Such-Model"},
        headers=bearer(api_token),
    )

    assert response.status_code == 404
    assert response.json()["error"] == "model_version_not_found"
    assert unknown_model.status_code == 404


def test_predictor_down_gives_502_quickly(
    logs_dir: Path, redis_url: str, trained_registry: str, api_token: str
) -> None:
    # Nothing listens on this port: the same refusal a stopped predictor gives.
    process, url = start_gateway(
        logs_dir, f"http://127.0.0.1:{free_port()}", redis_url, trained_registry, api_token
    )
    try:
        started = time.monotonic()
        predict = httpx.post(f"{url}/predict", json=SETOSA)
        elapsed = time.monotonic() - started
        ready = httpx.get(f"{url}/readyz")
    finally:
        process.stop()

    assert predict.status_code == 502
    assert predict.json()["error"] == "upstream_unavailable"
    assert elapsed < 2
    assert ready.status_code == 503
    assert ready.json()["detail"]["redis"] == "ok"


@pytest.fixture
def gateway_on_own_redis(
    logs_dir: Path, predictor_url: str, trained_registry: str, api_token: str
) -> Iterator[tuple[str, ManagedProcess]]:
    """A gateway with a Redis of its own, so stopping that Redis harms no other test."""
    redis_process, redis_url = start_redis(logs_dir)
    process, url = start_gateway(
        logs_dir, predictor_url, redis_url, trained_registry, api_token, name="gateway-own-redis"
    )
    yield url, redis_process
    process.stop()
    redis_process.stop()


def test_redis_down_stops_jobs_not_predictions(
    gateway_on_own_redis: tuple[str, ManagedProcess], api_token: str
) -> None:
    url, redis_process = gateway_on_own_redis
    accepted = httpx.post(f"{url}/retrain", json={}, headers=bearer(api_token))
    assert accepted.status_code == 202

    redis_process.stop()

    for method, path in [
        ("POST", "/retrain"),
        ("GET", "/jobs"),
        ("GET", accepted.headers["Location"]),
    ]:
        started = time.monotonic()
        response = httpx.request(method, f"{url}{path}", headers=bearer(api_token), json={})
        assert response.status_code == 503, path
        assert response.json()["error"] == "jobs_unavailable"
        assert time.monotonic() - started < 3, path
    predict = httpx.post(f"{url}/predict", json=SETOSA)
    assert predict.status_code == 200
    assert predict.json()["predicted_species"] == "Iris-setosa"
    ready = httpx.get(f"{url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["detail"] == {"predictor": "ok", "redis": "unreachable"}


def test_an_accepted_job_survives_a_redis_restart(
    logs_dir: Path, predictor_url: str, trained_registry: str, api_token: str
) -> None:
    # Persisted as `make up` and compose persist it (AOF, fsync each second).
    redis_process, redis_url = start_redis(logs_dir, durable=True)
    process, url = start_gateway(
        logs_dir, predictor_url, redis_url, trained_registry, api_token, name="gateway-aof"
    )
    headers = {**bearer(api_token), "Idempotency-Key": "survives-restarts"}
    try:
        accepted = httpx.post(f"{url}/retrain", headers=headers)
        assert accepted.status_code == 202

        redis_process.restart()
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        wait_until(tcp_open(port), 15, "redis after restart", redis_process)

        job = httpx.get(f"{url}{accepted.headers['Location']}", headers=bearer(api_token))
        again = httpx.post(f"{url}/retrain", headers=headers)
    finally:
        process.stop()
        redis_process.stop()

    assert job.status_code == 200
    assert job.json()["status"] == "queued"
    assert again.status_code == 200
    assert again.json()["job_id"] == accepted.json()["job_id"]


def test_promotion_refuses_a_version_that_cannot_be_served(
    gateway_url: str, trained_registry: str, api_token: str
) -> None:
    """A pickled model runs code when loaded: it never becomes production."""
    name = f"Iris-Pickled-{uuid.uuid4().hex[:6]}"
    data = load_iris()
    frame = pd.DataFrame(data.data, columns=list(FEATURE_NAMES))
    mlflow.set_tracking_uri(trained_registry)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            LogisticRegression(max_iter=500).fit(frame, data.target),
            name="model",
            serialization_format="cloudpickle",
            signature=infer_signature(frame, data.target),
            registered_model_name=name,
        )

    response = httpx.post(
        f"{gateway_url}/promote",
        json={"model_version": str(info.registered_model_version), "model_name": name},
        headers=bearer(api_token),
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "model_version_not_servable"
    assert "cloudpickle" in response.json()["message"]
    aliases = MlflowClient(trained_registry).get_registered_model(name).aliases
    assert "production" not in aliases


def test_concurrent_promotions_happen_one_after_the_other(
    gateway_url: str, trained_registry: str, api_token: str
) -> None:
    name = f"Iris-Race-{uuid.uuid4().hex[:6]}"
    versions = register_copies(trained_registry, name, 4)
    first = httpx.post(
        f"{gateway_url}/promote",
        json={"model_version": versions[0], "model_name": name},
        headers=bearer(api_token),
    )
    assert first.status_code == 200, first.text
    targets = versions * 2

    def promote(version: str) -> dict:
        response = httpx.post(
            f"{gateway_url}/promote",
            json={"model_version": version, "model_name": name},
            headers=bearer(api_token),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(targets)) as pool:
        answers = list(pool.map(promote, targets))

    final = MlflowClient(trained_registry).get_model_version_by_alias(name, "production").version
    # One after the other, each promotion saw the version the one before it set: the versions
    # they report as previous are the first one and every target except the last to run.
    previous = Counter(answer["previous_version"] for answer in answers)
    assert previous == Counter([versions[0], *targets]) - Counter([final])
