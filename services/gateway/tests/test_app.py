"""The gateway app over real HTTP: proxying, auth, jobs in a real Redis, errors, docs, metrics."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from pydantic import ValidationError

from iris_gateway.config import GatewaySettings
from iris_shared.jobs import RETRAIN_TASK, TRAINING_QUEUE

SETOSA_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
TYPO_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal--width": 0.2}


@pytest.fixture(scope="module")
def gateway(
    start_gateway_app: Callable[..., str],
    stub_predictor: tuple[str, dict[str, Any]],
    unit_redis: str,
) -> str:
    return start_gateway_app(predictor_url=stub_predictor[0], REDIS_URL=unit_redis)


@pytest.fixture
def redis_client(unit_redis: str) -> Any:
    client = redis.Redis.from_url(unit_redis, decode_responses=True)
    yield client
    client.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        named = line.startswith(f"{name}{{") or line.startswith(f"{name} ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- proxying -------------------------------------------------------------------------------


def test_predict_is_proxied_with_the_request_id(gateway: str) -> None:
    response = httpx.post(f"{gateway}/predict", json=SETOSA_ROW, headers={"X-Request-ID": "abc-1"})

    assert response.status_code == 200
    assert response.json()["predicted_species"] == "Iris-setosa"
    assert response.json()["seen_request_id"] == "abc-1"
    assert response.headers["X-Request-ID"] == "abc-1"
    assert response.headers["content-type"] == "application/json"


def test_predictor_validation_error_passes_through_unchanged(
    gateway: str, stub_predictor: tuple[str, dict[str, Any]]
) -> None:
    response = httpx.post(f"{gateway}/predict", json=TYPO_ROW)

    assert response.status_code == 400
    assert response.json() == stub_predictor[1]["typo_error"]


def test_batch_and_model_are_proxied(gateway: str) -> None:
    batch = httpx.post(f"{gateway}/predict/batch", json={"instances": [SETOSA_ROW, SETOSA_ROW]})
    model = httpx.get(f"{gateway}/model")

    assert batch.status_code == 200
    assert len(batch.json()["predictions"]) == 2
    assert model.status_code == 200
    assert model.json()["alias"] == "production"


def test_predictor_error_status_passes_through_and_is_counted(
    gateway: str, stub_predictor: tuple[str, dict[str, Any]]
) -> None:
    state = stub_predictor[1]
    before = metric_value(
        httpx.get(f"{gateway}/metrics").text,
        "iris_gateway_upstream_errors_total",
        upstream="predictor",
        reason="status_5xx",
    )
    state["ready"] = False
    try:
        response = httpx.get(f"{gateway}/model")
        ready = httpx.get(f"{gateway}/readyz")
    finally:
        state["ready"] = True

    assert response.status_code == 503
    assert response.json()["error"] == "model_not_loaded"
    assert ready.status_code == 503
    assert ready.json()["detail"]["predictor"] == "not ready"
    after = metric_value(
        httpx.get(f"{gateway}/metrics").text,
        "iris_gateway_upstream_errors_total",
        upstream="predictor",
        reason="status_5xx",
    )
    assert after == before + 1


def test_predictor_down_gives_502_quickly(
    start_gateway_app: Callable[..., str], unit_redis: str
) -> None:
    gateway = start_gateway_app(REDIS_URL=unit_redis)  # predictor_url: a closed port

    started = time.monotonic()
    response = httpx.post(f"{gateway}/predict", json=SETOSA_ROW)
    elapsed = time.monotonic() - started
    ready = httpx.get(f"{gateway}/readyz")
    metrics = httpx.get(f"{gateway}/metrics").text

    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert response.json()["detail"] == {"upstream": "predictor"}
    assert elapsed < 1.5
    assert ready.status_code == 503
    assert ready.json()["detail"]["redis"] == "ok"
    assert "predictor" in ready.json()["message"]
    assert (
        metric_value(
            metrics, "iris_gateway_upstream_errors_total", upstream="predictor", reason="connect"
        )
        == 1
    )


def test_predictor_timeout_gives_504(
    start_gateway_app: Callable[..., str], slow_predictor: str, unit_redis: str
) -> None:
    gateway = start_gateway_app(
        predictor_url=slow_predictor, REDIS_URL=unit_redis, predictor_timeout_s=0.5
    )

    started = time.monotonic()
    response = httpx.post(f"{gateway}/predict", json=SETOSA_ROW)

    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    assert time.monotonic() - started < 2


# --- request guard --------------------------------------------------------------------------


def test_oversized_and_non_json_bodies_are_refused(
    start_gateway_app: Callable[..., str], stub_predictor: tuple[str, dict[str, Any]]
) -> None:
    gateway = start_gateway_app(predictor_url=stub_predictor[0], max_body_bytes=100)

    too_large = httpx.post(f"{gateway}/predict", json={"instances": [SETOSA_ROW] * 10})
    not_json = httpx.post(
        f"{gateway}/predict", content=b"a=1", headers={"Content-Type": "text/plain"}
    )

    assert too_large.status_code == 413
    assert too_large.json()["error"] == "payload_too_large"
    assert not_json.status_code == 415
    assert not_json.json()["error"] == "unsupported_media_type"


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/retrain", "/promote"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_state_changing_routes_require_the_token(
    gateway: str, path: str, headers: dict[str, str]
) -> None:
    response = httpx.post(f"{gateway}{path}", json={"model_version": "1"}, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


# --- jobs -----------------------------------------------------------------------------------


def test_retrain_queues_a_job_by_name(gateway: str, token: str, redis_client: Any) -> None:
    params = {"models": {"random_forest": {"n_estimators": 10}}}
    response = httpx.post(f"{gateway}/retrain", json={"params": params}, headers=auth(token))

    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.json() == {"job_id": job_id, "status": "queued"}
    assert response.headers["Location"] == f"/jobs/{job_id}"
    messages = [json.loads(m) for m in redis_client.lrange(TRAINING_QUEUE, 0, -1)]
    message = next(m for m in messages if m["headers"]["id"] == job_id)
    assert message["headers"]["task"] == RETRAIN_TASK
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == []
    assert kwargs == {"data_rev": None, "params": params}

    job = httpx.get(f"{gateway}{response.headers['Location']}").json()
    assert job["status"] == "queued"
    assert job["parameters"] == {"data_rev": None, "params": params}
    assert job["submitted_at"]
    assert job["started_at"] is None


def test_retrain_accepts_an_empty_body(gateway: str, token: str) -> None:
    response = httpx.post(f"{gateway}/retrain", headers=auth(token))

    assert response.status_code == 202


def test_retrain_refuses_unknown_fields(gateway: str, token: str) -> None:
    response = httpx.post(f"{gateway}/retrain", json={"data-rev": "HEAD"}, headers=auth(token))

    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert "data-rev" in response.json()["message"]


def test_jobs_are_listed_newest_first(gateway: str, token: str) -> None:
    ids = [httpx.post(f"{gateway}/retrain", headers=auth(token)).json()["job_id"] for _ in range(3)]

    listed = httpx.get(f"{gateway}/jobs", params={"limit": 2})

    assert listed.status_code == 200
    assert [job["job_id"] for job in listed.json()] == ids[::-1][:2]
    assert httpx.get(f"{gateway}/jobs", params={"limit": 0}).status_code == 400


def test_unknown_job_is_404(gateway: str) -> None:
    response = httpx.get(f"{gateway}/jobs/00000000-0000-0000-0000-000000000000")
    malformed = httpx.get(f"{gateway}/jobs/not%20an%20id")

    assert response.status_code == 404
    assert response.json()["error"] == "job_not_found"
    assert malformed.status_code == 400


def _celery_meta(job_id: str, status: str, result: Any, date_done: str | None = None) -> str:
    """A result record exactly as Celery's Redis backend writes it (result_extended=True)."""
    return json.dumps(
        {
            "status": status,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": date_done,
            "task_id": job_id,
            "name": RETRAIN_TASK,
            "args": [],
            "kwargs": {},
            "worker": "trainer@host",
            "retries": 0,
            "queue": TRAINING_QUEUE,
        }
    )


def test_job_status_follows_the_celery_state(gateway: str, token: str, redis_client: Any) -> None:
    job_id = httpx.post(f"{gateway}/retrain", headers=auth(token)).json()["job_id"]
    key = f"celery-task-meta-{job_id}"

    def job() -> dict[str, Any]:
        return httpx.get(f"{gateway}/jobs/{job_id}").json()

    redis_client.set(key, _celery_meta(job_id, "STARTED", {"pid": 1, "hostname": "h"}))
    started = job()
    assert started["status"] == "running"
    assert started["started_at"] is not None
    assert started["progress"] is None

    progress = {
        "stage": "training",
        "model_name": "Iris-RandomForest",
        "step": 6,
        "total_steps": 8,
        "started_at": "2026-01-01T10:00:00Z",
    }
    redis_client.set(key, _celery_meta(job_id, "PROGRESS", progress))
    running = job()
    assert running["status"] == "running"
    assert running["progress"]["stage"] == "training"
    assert running["started_at"] == "2026-01-01T10:00:00Z"

    outcome = {
        "model_name": "Iris-RandomForest",
        "version": "2",
        "run_id": "a" * 32,
        "metrics": {"accuracy": 0.97},
        "gate": "passed",
        "gate_reason": "ok",
        "aliases_set": ["challenger"],
    }
    result = {"data_md5": "d" * 32, "rows": 150, "models": {"Iris-RandomForest": outcome}}
    redis_client.set(key, _celery_meta(job_id, "SUCCESS", result, "2026-01-01T10:01:00.5"))
    done = job()
    assert done["status"] == "succeeded"
    assert done["result"]["models"]["Iris-RandomForest"]["version"] == "2"
    assert done["finished_at"] == "2026-01-01T10:01:00.500000Z"
    assert done["started_at"] == "2026-01-01T10:00:00Z"
    assert done["error"] is None

    # The outcome is kept with the job record, so it outlives Celery's own result.
    redis_client.delete(key)
    assert job() == done


@pytest.mark.parametrize(
    ("exc_type", "message", "expected"),
    [
        ("TrainingJobFailed", "Invalid training parameters: x", "Invalid training parameters: x"),
        ("KeyError", "'boom'", "KeyError: 'boom'"),
    ],
)
def test_failed_job_reports_its_error(
    gateway: str, token: str, redis_client: Any, exc_type: str, message: str, expected: str
) -> None:
    job_id = httpx.post(f"{gateway}/retrain", headers=auth(token)).json()["job_id"]
    failure = {"exc_type": exc_type, "exc_message": [message], "exc_module": "x"}
    redis_client.set(
        f"celery-task-meta-{job_id}",
        _celery_meta(job_id, "FAILURE", failure, "2026-01-01T10:01:00"),
    )

    job = httpx.get(f"{gateway}/jobs/{job_id}").json()

    assert job["status"] == "failed"
    assert job["error"] == expected
    assert job["result"] is None


def test_submitted_jobs_are_counted(gateway: str, token: str) -> None:
    def submitted() -> float:
        text = httpx.get(f"{gateway}/metrics").text
        return metric_value(text, "iris_retrain_jobs_submitted_total")

    before = submitted()
    httpx.post(f"{gateway}/retrain", headers=auth(token))

    assert submitted() == before + 1


# --- Redis down -----------------------------------------------------------------------------


def test_redis_down_fails_jobs_fast_but_predictions_work(
    start_gateway_app: Callable[..., str], stub_predictor: tuple[str, dict[str, Any]], token: str
) -> None:
    gateway = start_gateway_app(predictor_url=stub_predictor[0])  # REDIS_URL: a closed port

    for method, path in [("POST", "/retrain"), ("GET", "/jobs"), ("GET", "/jobs/abc")]:
        started = time.monotonic()
        response = httpx.request(method, f"{gateway}{path}", headers=auth(token))
        assert response.status_code == 503, path
        assert response.json()["error"] == "jobs_unavailable"
        assert time.monotonic() - started < 2, path
    assert httpx.post(f"{gateway}/predict", json=SETOSA_ROW).status_code == 200
    ready = httpx.get(f"{gateway}/readyz")
    assert ready.status_code == 503
    assert ready.json()["detail"] == {"predictor": "ok", "redis": "unreachable"}


# --- promote --------------------------------------------------------------------------------


def test_promote_with_mlflow_down_gives_502(gateway: str, token: str) -> None:
    response = httpx.post(f"{gateway}/promote", json={"model_version": "2"}, headers=auth(token))

    assert response.status_code == 502
    assert response.json()["detail"] == {"upstream": "mlflow"}


def test_promote_refuses_a_malformed_version(gateway: str, token: str) -> None:
    response = httpx.post(f"{gateway}/promote", json={"model_version": "v2"}, headers=auth(token))

    assert response.status_code == 400
    assert response.json()["detail"][0]["field"] == "model_version"


# --- health, docs, metrics, settings --------------------------------------------------------


def test_health_and_readiness(gateway: str) -> None:
    assert httpx.get(f"{gateway}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"predictor": "ok", "redis": "ok"}


def test_openapi_documents_the_proxied_bodies_and_errors(gateway: str) -> None:
    spec = httpx.get(f"{gateway}/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]

    assert predict["summary"] == "Predict the species of one flower."
    body_ref = predict["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/PredictionRequest"
    schemas = spec["components"]["schemas"]
    assert schemas["PredictionRequest"]["examples"][0]["petal_width"] == 0.2
    assert "examples" in schemas["BatchPredictionRequest"]
    assert predict["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )
    retrain = spec["paths"]["/retrain"]["post"]
    assert retrain["security"] == [{"HTTPBearer": []}]
    assert "202" in retrain["responses"]
    assert {"/jobs", "/jobs/{job_id}", "/promote", "/model", "/predict/batch"} <= set(spec["paths"])
    assert httpx.get(f"{gateway}/docs").status_code == 200


def test_metrics_use_the_agreed_names_and_fine_buckets(gateway: str) -> None:
    httpx.get(f"{gateway}/healthz")
    text = httpx.get(f"{gateway}/metrics").text

    assert 'http_requests_total{handler="/healthz",method="GET",status="2xx"}' in text
    assert (
        'http_request_duration_seconds_bucket{handler="/healthz",le="0.001",method="GET"}' in text
    )
    assert "# TYPE iris_gateway_upstream_errors_total counter" in text
    assert "# TYPE iris_retrain_jobs_submitted_total counter" in text
    # The dashboard's CPU and memory panels read these for the gateway too.
    assert "process_resident_memory_bytes " in text
    assert "process_cpu_seconds_total " in text


@pytest.mark.parametrize("weak", ["", "   ", "changeme", "short"])
def test_settings_refuse_an_empty_or_placeholder_token(weak: str) -> None:
    with pytest.raises(ValidationError, match="API_TOKEN"):
        GatewaySettings(_env_file=None, API_TOKEN=weak)  # type: ignore[call-arg]


def test_development_accepts_a_placeholder_token_but_never_an_empty_one() -> None:
    settings = GatewaySettings(_env_file=None, API_TOKEN="changeme", environment="development")  # type: ignore[call-arg]
    assert settings.api_token.get_secret_value() == "changeme"
    with pytest.raises(ValidationError, match="empty"):
        GatewaySettings(_env_file=None, API_TOKEN="", environment="development")  # type: ignore[call-arg]
