"""Anonymous clients cannot fill Redis: kept answers have a byte budget and batches a row cap.

A Redis with a memory limit and no eviction (as `make up` and compose run it) serves the job
queue, the job records and feedback. Anonymous 10,000-row batches flood the predictor through
the gateway; the answers kept for feedback stay within PREDICTOR_STORE_MAX_BYTES, so Redis keeps
taking jobs and labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from iris_devstack.processes import tls_context, wait_until
from iris_devstack.redis import start_redis
from iris_shared.feedback import FeedbackKeys
from tests.support.core import JOBS_NAMESPACE
from tests.support.exposition import metric_value
from tests.support.gateway import start_gateway
from tests.support.predictor import start_predictor, wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024
STORE_MAX_BYTES = 2 * MIB
# Without the budget, the flood alone (about 0.6 MB kept per batch) would pass this.
REDIS_MAXMEMORY = 64 * MIB
FLOOD_BATCHES = 150
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
KEYS = FeedbackKeys(JOBS_NAMESPACE)


@dataclass
class Stack:
    redis: redis.Redis
    predictor_url: str
    gateway_url: str


@pytest.fixture(scope="module")
def stack(logs_dir: Path, trained_registry: str, api_token: str) -> Iterator[Stack]:
    redis_process, redis_url = start_redis(logs_dir)
    client = redis.Redis.from_url(redis_url)
    client.config_set("maxmemory", str(REDIS_MAXMEMORY))
    client.config_set("maxmemory-policy", "noeviction")
    predictor, predictor_url = start_predictor(
        logs_dir,
        trained_registry,
        REDIS_URL=redis_url,
        JOBS_NAMESPACE=JOBS_NAMESPACE,
        PREDICTOR_STORE_MAX_BYTES=str(STORE_MAX_BYTES),
    )
    gateway, gateway_url = start_gateway(
        logs_dir, predictor_url, redis_url, trained_registry, api_token, name="gateway-budget"
    )
    wait_ready(predictor, predictor_url)
    yield Stack(client, predictor_url, gateway_url)
    gateway.stop()
    predictor.stop()
    client.close()
    redis_process.stop()


def flood(url: str) -> list[httpx.Response]:
    body = orjson.dumps({"instances": [SETOSA, VIRGINICA] * 5000})
    headers = {"Content-Type": "application/json"}

    def send(_: int) -> httpx.Response:
        return httpx.post(
            f"{url}/predict/batch", content=body, headers=headers, timeout=60, verify=tls_context()
        )

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(send, range(FLOOD_BATCHES)))


def test_a_flood_of_anonymous_batches_stays_within_the_budget_and_jobs_and_feedback_still_work(
    stack: Stack, api_token: str
) -> None:
    before = stack.redis.info("memory")["used_memory"]

    answers = flood(stack.gateway_url)

    assert [a.status_code for a in answers] == [200] * FLOOD_BATCHES
    assert {a.json()["feedback_rows"] for a in answers} == {1000}
    # The predictor keeps its last answers a moment after answering; then the budget holds.
    last = KEYS.prediction(answers[-1].json()["request_id"])
    wait_until(lambda: stack.redis.exists(last), 10, "the last answer kept")
    kept_bytes = int(stack.redis.get(KEYS.prediction_bytes) or 0)
    used = stack.redis.info("memory")["used_memory"]
    assert 0 < kept_bytes <= STORE_MAX_BYTES
    assert used - before <= STORE_MAX_BYTES + 4 * MIB, f"Redis grew by {used - before} bytes"
    metrics = httpx.get(f"{stack.predictor_url}/metrics").text
    assert metric_value(metrics, "iris_prediction_store_dropped_total", reason="bytes") > 0

    # The oldest answers went first; the newest take labels, on their first 1,000 rows only.
    auth = {"Authorization": f"Bearer {api_token}"}
    newest = answers[-1].json()["request_id"]
    oldest = answers[0].json()["request_id"]
    labels = [
        {"request_id": newest, "row": 999, "actual_species": "Iris-virginica"},
        {"request_id": newest, "row": 1000, "actual_species": "Iris-setosa"},
        {"request_id": oldest, "row": 0, "actual_species": "Iris-setosa"},
    ]
    outcomes = httpx.post(f"{stack.gateway_url}/feedback", json=labels, headers=auth).json()
    assert [r["outcome"] for r in outcomes["results"]] == ["accepted", "not_found", "not_found"]

    # Redis still takes jobs and fresh feedback.
    job = httpx.post(f"{stack.gateway_url}/retrain", headers=auth)
    assert job.status_code == 202, job.text
    record = httpx.get(f"{stack.gateway_url}/jobs/{job.json()['job_id']}", headers=auth)
    assert record.json()["status"] == "queued"
    fresh = httpx.post(f"{stack.gateway_url}/predict", json=SETOSA).json()["request_id"]
    wait_until(lambda: stack.redis.exists(KEYS.prediction(fresh)), 10, "fresh answer kept")
    label = {"request_id": fresh, "actual_species": "Iris-setosa"}
    assert httpx.post(f"{stack.gateway_url}/feedback", json=label, headers=auth).status_code == 202
