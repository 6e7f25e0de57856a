"""The gateway app over real HTTP: proxying, auth, jobs in a real Redis, errors, docs, metrics."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from iris_gateway.config import GatewaySettings
from iris_shared.jobs import (
    RETRAIN_TASK,
    JobKeys,
    JobProgress,
    JobStatus,
    TrainingResult,
    TrainingStage,
    record_fields,
)
from tests.support.exposition import metric_value

SETOSA_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# The module's gateway: its own namespace, and room for every job its tests submit (nothing
# consumes them here).
UNIT_NAMESPACE = f"unit-{uuid.uuid4().hex[:8]}"
UNIT_KEYS = JobKeys(UNIT_NAMESPACE)
TYPO_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal--width": 0.2}


@pytest.fixture(scope="module")
def gateway(
    start_gateway_app: Callable[..., str],
    stub_predictor: tuple[str, dict[str, Any]],
    unit_redis: str,
) -> str:
    return start_gateway_app(
        predictor_url=stub_predictor[0],
        REDIS_URL=unit_redis,
        JOBS_NAMESPACE=UNIT_NAMESPACE,
        RETRAIN_MAX_PENDING=1000,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
    metrics = httpx.get(f"{gateway}/metrics").text
    ready = httpx.get(f"{gateway}/readyz")

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


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/retrain"), ("POST", "/promote"), ("GET", "/jobs"), ("GET", "/jobs/abc")],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_job_and_promotion_routes_require_the_token(
    gateway: str, method: str, path: str, headers: dict[str, str]
) -> None:
    body = {"model_version": "1"} if method == "POST" else None
    response = httpx.request(method, f"{gateway}{path}", json=body, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


# --- jobs -----------------------------------------------------------------------------------


def queued_messages(redis_client: Any, keys: JobKeys) -> list[dict[str, Any]]:
    """The messages waiting in the namespace's queue, as kombu's Redis transport stores them."""
    raw = redis_client.lrange(f"{keys.broker_prefix}{keys.queue}", 0, -1)
    return [json.loads(m) for m in raw]


def test_retrain_queues_a_job_by_name_in_its_namespace(
    gateway: str, token: str, redis_client: Any
) -> None:
    params = {"models": {"random_forest": {"n_estimators": 10}}}
    response = httpx.post(f"{gateway}/retrain", json={"params": params}, headers=auth(token))

    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.json()["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{job_id}"
    message = next(
        m for m in queued_messages(redis_client, UNIT_KEYS) if m["headers"]["id"] == job_id
    )
    assert message["headers"]["task"] == RETRAIN_TASK
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == []
    assert kwargs == {"data_rev": None, "params": params}
    # Nothing of the job lands outside a namespace (Celery's default queue, result keys).
    defaults = ("celery", "_kombu", "unacked")
    assert not [key for key in redis_client.keys("*") if key.startswith(defaults)]

    job = httpx.get(f"{gateway}{response.headers['Location']}", headers=auth(token)).json()
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


def test_the_same_idempotency_key_returns_the_same_job_and_queues_it_once(
    gateway: str, token: str, redis_client: Any
) -> None:
    headers = {**auth(token), "Idempotency-Key": f"client-retry-{uuid.uuid4()}"}

    first = httpx.post(f"{gateway}/retrain", headers=headers)
    again = httpx.post(f"{gateway}/retrain", headers=headers)
    other = httpx.post(f"{gateway}/retrain", headers=auth(token))

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert other.json()["job_id"] != first.json()["job_id"]
    ids = [m["headers"]["id"] for m in queued_messages(redis_client, UNIT_KEYS)]
    assert ids.count(first.json()["job_id"]) == 1


def test_beyond_the_pending_cap_retrain_answers_429_until_a_job_ends(
    start_gateway_app: Callable[..., str], unit_redis: str, token: str, redis_client: Any
) -> None:
    namespace = f"cap-{uuid.uuid4().hex[:8]}"
    keys = JobKeys(namespace)
    gateway = start_gateway_app(
        REDIS_URL=unit_redis, JOBS_NAMESPACE=namespace, RETRAIN_MAX_PENDING=2
    )
    accepted = [httpx.post(f"{gateway}/retrain", headers=auth(token)) for _ in range(2)]

    refused = httpx.post(f"{gateway}/retrain", headers=auth(token))

    assert [r.status_code for r in accepted] == [202, 202]
    assert refused.status_code == 429
    assert refused.json()["error"] == "too_many_pending_jobs"
    assert int(refused.headers["Retry-After"]) > 0
    assert len(queued_messages(redis_client, keys)) == 2
    # A job ends (the worker writes its outcome): there is room again.
    ended = accepted[0].json()["job_id"]
    redis_client.hset(keys.record(ended), mapping=record_fields(status=JobStatus.succeeded))
    assert httpx.post(f"{gateway}/retrain", headers=auth(token)).status_code == 202


def test_a_failed_publish_answers_503_and_leaves_a_failed_job_that_never_runs(
    start_gateway_app: Callable[..., str], unit_redis: str, token: str, redis_client: Any
) -> None:
    namespace = f"broken-{uuid.uuid4().hex[:8]}"
    keys = JobKeys(namespace)
    gateway = start_gateway_app(REDIS_URL=unit_redis, JOBS_NAMESPACE=namespace)
    # The queue's key holds a string: the broker refuses the push (WRONGTYPE).
    redis_client.set(f"{keys.broker_prefix}{keys.queue}", "not a list")
    headers = {**auth(token), "Idempotency-Key": "k-1"}

    response = httpx.post(f"{gateway}/retrain", headers=headers)

    assert response.status_code == 503
    assert response.json()["error"] == "jobs_unavailable"
    [job] = httpx.get(f"{gateway}/jobs", headers=auth(token)).json()
    assert job["status"] == "failed"
    assert "Not queued" in job["error"]
    assert redis_client.zcard(keys.pending) == 0
    # The client was told 503, so its retry with the same key is a new attempt.
    redis_client.delete(f"{keys.broker_prefix}{keys.queue}")
    retried = httpx.post(f"{gateway}/retrain", headers=headers)
    assert retried.status_code == 202
    assert retried.json()["job_id"] != job["job_id"]


def test_jobs_are_listed_newest_first(gateway: str, token: str) -> None:
    ids = [httpx.post(f"{gateway}/retrain", headers=auth(token)).json()["job_id"] for _ in range(3)]

    listed = httpx.get(f"{gateway}/jobs", params={"limit": 2}, headers=auth(token))

    assert listed.status_code == 200
    assert [job["job_id"] for job in listed.json()] == ids[::-1][:2]
    too_few = httpx.get(f"{gateway}/jobs", params={"limit": 0}, headers=auth(token))
    assert too_few.status_code == 400


def test_unknown_job_is_404(gateway: str, token: str) -> None:
    response = httpx.get(
        f"{gateway}/jobs/00000000-0000-0000-0000-000000000000", headers=auth(token)
    )
    malformed = httpx.get(f"{gateway}/jobs/not%20an%20id", headers=auth(token))

    assert response.status_code == 404
    assert response.json()["error"] == "job_not_found"
    assert malformed.status_code == 400


def test_job_status_is_what_the_worker_wrote_in_the_record(
    gateway: str, token: str, redis_client: Any
) -> None:
    job_id = httpx.post(f"{gateway}/retrain", headers=auth(token)).json()["job_id"]
    record = UNIT_KEYS.record(job_id)

    def job() -> dict[str, Any]:
        return httpx.get(f"{gateway}/jobs/{job_id}", headers=auth(token)).json()

    progress = JobProgress(
        stage=TrainingStage.training, model_name="Iris-RandomForest", step=6, total_steps=8
    )
    redis_client.hset(
        record,
        mapping=record_fields(
            status=JobStatus.running,
            started_at=datetime(2026, 1, 1, 10, 0, tzinfo=UTC),
            heartbeat_at=datetime(2026, 1, 1, 10, 0, 5, tzinfo=UTC),
            deliveries=1,
            progress=progress,
        ),
    )
    running = job()
    assert running["status"] == "running"
    assert running["progress"]["stage"] == "training"
    assert running["started_at"] == "2026-01-01T10:00:00Z"
    assert running["heartbeat_at"] == "2026-01-01T10:00:05Z"
    assert running["deliveries"] == 1

    outcome = {
        "model_name": "Iris-RandomForest",
        "version": "2",
        "run_id": "a" * 32,
        "metrics": {"accuracy": 0.97},
        "gate": "passed",
        "gate_reason": "ok",
        "aliases_set": ["challenger"],
    }
    result = TrainingResult.model_validate(
        {"data_md5": "d" * 32, "rows": 150, "models": {"Iris-RandomForest": outcome}}
    )
    redis_client.hdel(record, "progress")
    redis_client.hset(
        record,
        mapping=record_fields(
            status=JobStatus.succeeded,
            finished_at=datetime(2026, 1, 1, 10, 1, 0, 500000, tzinfo=UTC),
            result=result,
        ),
    )
    done = job()
    assert done["status"] == "succeeded"
    assert done["result"]["models"]["Iris-RandomForest"]["version"] == "2"
    assert done["finished_at"] == "2026-01-01T10:01:00.500000Z"
    assert done["started_at"] == "2026-01-01T10:00:00Z"
    assert done["progress"] is None
    assert done["error"] is None


def test_reading_a_job_writes_nothing(gateway: str, token: str, redis_client: Any) -> None:
    job_id = httpx.post(f"{gateway}/retrain", headers=auth(token)).json()["job_id"]
    before = redis_client.hgetall(UNIT_KEYS.record(job_id))

    httpx.get(f"{gateway}/jobs/{job_id}", headers=auth(token))
    httpx.get(f"{gateway}/jobs", headers=auth(token))

    assert redis_client.hgetall(UNIT_KEYS.record(job_id)) == before


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


@pytest.mark.parametrize(
    "body",
    [
        {"model_version": "944510860861664225994766620"},
        {"model_version": str(2**31)},
        {"model_version": "0"},
        {"model_version": "2", "model_name": "a/b"},
        {"model_version": "2", "model_name": "nul\x00"},
    ],
    ids=["beyond-int64", "beyond-int32", "zero", "slash-in-name", "nul-in-name"],
)
def test_promote_refuses_what_mlflow_could_never_hold_without_asking_it(
    gateway: str, token: str, body: dict[str, str]
) -> None:
    """MLflow is down here: a call to it would be a 502, so the 400 proves it was not asked."""
    response = httpx.post(f"{gateway}/promote", json=body, headers=auth(token))

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "validation_error"


def test_fastapi_bodies_that_are_not_utf8_are_malformed_json(gateway: str, token: str) -> None:
    for path in ("/retrain", "/promote"):
        for body in (b'{"model_version\xff": "2"}', '{"model_version": "2"}'.encode("utf-16")):
            response = httpx.post(
                f"{gateway}{path}",
                content=body,
                headers={**auth(token), "Content-Type": "application/json"},
            )

            assert response.status_code == 400, (path, body, response.text)
            assert response.json()["error"] == "malformed_json", (path, body, response.text)
            assert response.json()["detail"][0]["field"] == "body"


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
