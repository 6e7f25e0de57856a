"""The gateway as a real process in front of the real predictor, Redis and MLflow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import start_gateway
from tests.support.processes import ManagedProcess, free_port, start_redis

pytestmark = pytest.mark.integration

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
    assert response.headers["X-Request-ID"] == "e2e-1"


def test_batch_and_model_match_the_predictor(gateway_url: str, predictor_url: str) -> None:
    batch = httpx.post(f"{gateway_url}/predict/batch", json={"instances": [SETOSA, SETOSA]})
    through_gateway = httpx.get(f"{gateway_url}/model")

    assert batch.status_code == 200
    assert [p["predicted_species"] for p in batch.json()["predictions"]] == ["Iris-setosa"] * 2
    assert through_gateway.status_code == 200
    assert through_gateway.json() == httpx.get(f"{predictor_url}/model").json()


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
    assert "iris_gateway_upstream_errors_total" in gateway
    assert "iris_retrain_jobs_submitted_total" in gateway
    assert "iris_predictions_total" in predictor
    assert "http_requests_total" in predictor


def test_ready_when_predictor_and_redis_are(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"predictor": "ok", "redis": "ok"}


def test_unknown_job_is_404(gateway_url: str) -> None:
    response = httpx.get(f"{gateway_url}/jobs/8a0d4e4c-0000-4000-8000-000000000000")

    assert response.status_code == 404
    assert response.json()["error"] == "job_not_found"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"}])
def test_retrain_and_promote_need_the_token(gateway_url: str, headers: dict[str, str]) -> None:
    retrain = httpx.post(f"{gateway_url}/retrain", json={}, headers=headers)
    promote = httpx.post(f"{gateway_url}/promote", json={"model_version": "1"}, headers=headers)

    for response in (retrain, promote):
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
