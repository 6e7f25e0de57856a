"""The Celery retrain worker as a real process, fed through a real Redis.

Jobs are sent by name, the way the gateway sends them, and their state is read from
Celery's result key in Redis (`celery-task-meta-<id>`), the way the gateway reads it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from mlflow.exceptions import MlflowException, RestException

from iris_shared.jobs import RETRAIN_TASK, TRAINING_QUEUE, TrainingResult, TrainingStage
from iris_trainer.tasks import is_transient
from tests.support.processes import ManagedProcess, start_redis
from tests.support.worker import start_worker

TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def send_job(redis_url: str, **kwargs: Any) -> str:
    sender = Celery("test-sender", broker=redis_url, set_as_current=False)
    job_id = str(uuid.uuid4())
    try:
        sender.send_task(RETRAIN_TASK, kwargs=kwargs, task_id=job_id, queue=TRAINING_QUEUE)
    finally:
        sender.close()
    return job_id


class JobWatcher:
    """Polls a job's Celery state and remembers every distinct state it saw."""

    def __init__(self, redis_url: str, job_id: str) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.job_id = job_id
        self.seen: list[dict[str, Any]] = []

    def poll(self) -> dict[str, Any] | None:
        raw = self.client.get(f"celery-task-meta-{self.job_id}")
        if raw is None:
            return None
        meta = json.loads(raw)
        if not self.seen or self.seen[-1] != meta:
            self.seen.append(meta)
        return meta

    def wait(self, until: Any, timeout: float, process: ManagedProcess | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            meta = self.poll()
            if meta is not None and until(meta):
                return meta
            if process is not None and process.popen.poll() is not None:
                raise AssertionError(f"worker exited\n{process.tail()}")
            time.sleep(0.05)
        tail = process.tail() if process is not None else ""
        raise AssertionError(f"job {self.job_id} timed out; saw {self.seen[-1:]}\n{tail}")

    def finished(self, timeout: float, process: ManagedProcess | None = None) -> dict:
        return self.wait(lambda m: m["status"] in TERMINAL, timeout, process)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def watch(redis_url: str) -> Iterator[Any]:
    watchers: list[JobWatcher] = []

    def factory(job_id: str, url: str = redis_url) -> JobWatcher:
        watchers.append(JobWatcher(url, job_id))
        return watchers[-1]

    yield factory
    for watcher in watchers:
        watcher.close()


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (MlflowException("API request to http://x/api failed with exception refused"), True),
        (RestException({"error_code": "INTERNAL_ERROR", "message": "db locked"}), True),
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),
        (ConnectionRefusedError("refused"), True),
        (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}), False),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),
        (MlflowException("Model signature mismatch"), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_mlflow_errors_are_retried(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.mark.integration
@pytest.mark.slow
def test_retrain_job_reports_progress_and_result(
    trainer_worker: ManagedProcess, redis_url: str, watch: Any
) -> None:
    job_id = send_job(redis_url, params={"models": {"random_forest": {"n_estimators": 20}}})
    watcher = watch(job_id)

    meta = watcher.finished(240, trainer_worker)

    assert meta["status"] == "SUCCESS", meta
    stages = {m["result"]["stage"] for m in watcher.seen if m["status"] == "PROGRESS"}
    assert stages & {TrainingStage.training, TrainingStage.registering}, watcher.seen
    progress = [m["result"] for m in watcher.seen if m["status"] == "PROGRESS"]
    assert all(p["total_steps"] == 8 and p["started_at"] for p in progress)
    assert meta["name"] == RETRAIN_TASK
    assert meta["queue"] == TRAINING_QUEUE
    result = TrainingResult.model_validate(meta["result"])
    assert set(result.models) == {"Iris-LogisticRegression", "Iris-RandomForest"}
    for outcome in result.models.values():
        # trained_registry already holds version 1, so this run registers a later one.
        assert int(outcome.version) >= 2
        assert len(outcome.run_id) == 32
        assert outcome.metrics["accuracy"] > 0.8
        assert outcome.gate in ("passed", "failed")
        assert outcome.gate_reason
        assert outcome.aliases_set == (["challenger"] if outcome.gate == "passed" else [])


@pytest.mark.integration
def test_invalid_params_fail_at_once_without_retry(
    trainer_worker: ManagedProcess, redis_url: str, watch: Any
) -> None:
    started = time.monotonic()
    job_id = send_job(redis_url, params={"models": {"random_forest": {"n_estimators": -3}}})

    meta = watch(job_id).finished(60, trainer_worker)

    assert meta["status"] == "FAILURE"
    assert meta["retries"] == 0
    assert meta["result"]["exc_type"] == "TrainingJobFailed"
    message = " ".join(meta["result"]["exc_message"])
    assert "models.random_forest.n_estimators" in message
    assert time.monotonic() - started < 30


@pytest.mark.integration
def test_unknown_data_revision_fails_with_a_clear_message(
    trainer_worker: ManagedProcess, redis_url: str, watch: Any
) -> None:
    job_id = send_job(redis_url, data_rev="no-such-revision")

    meta = watch(job_id).finished(120, trainer_worker)

    assert meta["status"] == "FAILURE"
    assert meta["retries"] == 0
    assert meta["result"]["exc_type"] == "TrainingJobFailed"
    assert "no-such-revision" in " ".join(meta["result"]["exc_message"])


@pytest.mark.integration
@pytest.mark.slow
def test_job_of_a_killed_worker_runs_again_on_a_new_worker(
    logs_dir: Path, trained_registry: str, watch: Any
) -> None:
    # A broker of its own, so the short visibility timeout touches no other test's jobs.
    redis_process, redis_url = start_redis(logs_dir)
    # Redelivery waits for the visibility timeout, counted from the first delivery. A rerun
    # longer than that is handed out once more after it ends, which this test tolerates.
    transport = {
        "TRAINER_VISIBILITY_TIMEOUT_S": "20",
        "TRAINER_UNACKED_RESTORE_INTERVAL_S": "1",
        "TRAINER_UNACKED_RESTORE_THROTTLE_S": "1",
    }
    workers: list[ManagedProcess] = []
    try:
        first = start_worker(
            logs_dir, redis_url, trained_registry, name="doomed-worker", **transport
        )
        workers.append(first)
        job_id = send_job(redis_url, params={"models": {"random_forest": {"n_estimators": 300}}})
        watcher = watch(job_id, redis_url)
        watcher.wait(lambda m: m["status"] == "PROGRESS" and m["result"]["step"] >= 3, 120, first)

        first.kill()  # SIGKILL the whole process group: nothing is left to requeue the job.
        killed_at = time.monotonic()
        second = start_worker(
            logs_dir, redis_url, trained_registry, name="rescue-worker", **transport
        )
        workers.append(second)
        meta = watcher.wait(lambda m: m["status"] == "SUCCESS", 240, second)

        assert meta["worker"].startswith("rescue-worker@")
        TrainingResult.model_validate(meta["result"])
        assert time.monotonic() - killed_at > 5  # came back through redelivery, not by luck
    finally:
        for worker in workers:
            worker.stop()
        redis_process.stop()
