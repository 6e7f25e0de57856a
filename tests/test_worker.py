"""The Celery retrain worker as a real process, fed through a real Redis.

Jobs are sent by name with Celery, under the deployment's namespace, the way the gateway
sends them; their state is read from the job record (`iris_shared.jobs`), the one account
of a job that the gateway's `GET /jobs/{id}` reads too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

from iris_devstack.processes import ManagedProcess
from iris_devstack.redis import start_redis
from iris_shared.jobs import (
    MAX_DELIVERIES,
    RETRAIN_TASK,
    TERMINAL_STATUSES,
    JobKeys,
    JobStatus,
    TrainingJob,
    TrainingStage,
    job_from_record,
    record_fields,
)
from iris_shared.registry import (
    CHALLENGER,
    LINEAGE_TAGS,
    LOGISTIC_REGRESSION,
    RANDOM_FOREST,
    GateOutcome,
    VersionTag,
)
from iris_trainer.tasks import is_transient
from tests.support.core import JOBS_NAMESPACE
from tests.support.worker import start_worker

KEYS = JobKeys(JOBS_NAMESPACE)
# For the tests that kill or stop a worker, on a broker of their own: a dead worker's job
# comes back after 12 s without a heartbeat instead of the default 40 s.
FAST_REDELIVERY = {
    "TRAINER_VISIBILITY_TIMEOUT_S": "12",
    "TRAINER_HEARTBEAT_INTERVAL_S": "2",
    "TRAINER_UNACKED_RESTORE_INTERVAL_S": "1",
    "TRAINER_SOFT_SHUTDOWN_TIMEOUT_S": "1",
}


def send_job(redis_url: str, **kwargs: Any) -> str:
    """Publish a job straight to the worker's queue, bypassing the gateway's checks."""
    sender = Celery("test-sender", broker=redis_url, set_as_current=False)
    sender.conf.broker_transport_options = {"global_keyprefix": KEYS.broker_prefix}
    job_id = str(uuid.uuid4())
    try:
        sender.send_task(RETRAIN_TASK, kwargs=kwargs, task_id=job_id, queue=KEYS.queue)
    finally:
        sender.close()
    return job_id


class JobWatcher:
    """Polls a job's record and remembers every distinct state of it."""

    def __init__(self, redis_url: str, job_id: str) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.job_id = job_id
        self.seen: list[TrainingJob] = []

    def poll(self) -> TrainingJob | None:
        record = self.client.hgetall(KEYS.record(self.job_id))
        if not record:
            return None
        job = job_from_record(self.job_id, record)
        if not self.seen or self.seen[-1] != job:
            self.seen.append(job)
        return job

    def wait(
        self,
        until: Callable[[TrainingJob], bool],
        timeout: float,
        process: ManagedProcess | None = None,
    ) -> TrainingJob:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.poll()
            if job is not None and until(job):
                return job
            if process is not None and process.popen.poll() is not None:
                raise AssertionError(f"worker exited\n{process.tail()}")
            time.sleep(0.05)
        tail = process.tail() if process is not None else ""
        raise AssertionError(f"job {self.job_id} timed out; saw {self.seen[-1:]}\n{tail}")

    def finished(self, timeout: float, process: ManagedProcess | None = None) -> TrainingJob:
        return self.wait(lambda job: job.status in TERMINAL_STATUSES, timeout, process)

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def watch(redis_url: str) -> Iterator[Callable[..., JobWatcher]]:
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


def versions_of_job(tracking_uri: str, name: str, job_id: str) -> list[str]:
    found = MlflowClient(tracking_uri).search_model_versions(
        f"name = '{name}' and tags.`{VersionTag.JOB_ID}` = '{job_id}'"
    )
    return sorted(str(v.version) for v in found)


@pytest.mark.integration
@pytest.mark.slow
def test_retrain_job_reports_progress_heartbeat_and_result(
    trainer_worker: ManagedProcess, redis_url: str, trained_registry: str, watch: Any
) -> None:
    job_id = send_job(redis_url, params={"models": {"random_forest": {"n_estimators": 20}}})
    watcher = watch(job_id)

    job = watcher.finished(240, trainer_worker)

    assert job.status is JobStatus.succeeded, job.error
    assert job.deliveries == 1
    # All the worker wrote, from its start, is JSON lines, Celery's and MLflow's records too,
    # without the warnings MLflow gives on every run that cannot apply here (pipeline.run).
    written = [line for line in trainer_worker.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in written]
    assert any(record["logger"].startswith("mlflow.") for record in records), written
    assert any(" consumes " in record["message"] for record in records), written
    for unwanted in ("validate serving input", "resolve installed pip version", "View run"):
        assert not any(unwanted in line for line in written), unwanted
    progress = [seen.progress for seen in watcher.seen if seen.progress is not None]
    stages = {p.stage for p in progress}
    assert stages & {TrainingStage.training, TrainingStage.registering}, watcher.seen
    assert all(p.total_steps == 8 for p in progress)
    assert job.progress is None
    assert job.started_at is not None
    assert job.finished_at is not None
    assert job.heartbeat_at is not None
    assert job.started_at <= job.heartbeat_at
    result = job.result
    assert result is not None
    assert set(result.models) == {LOGISTIC_REGRESSION, RANDOM_FOREST}
    assert set(result.stage_seconds) == set(TrainingStage)
    assert result.stage_seconds[TrainingStage.training] > 0
    client = MlflowClient(trained_registry)
    for name, outcome in result.models.items():
        # trained_registry already holds version 1, so this run registers a later one.
        assert int(outcome.version) >= 2
        assert len(outcome.run_id) == 32
        assert outcome.metrics["accuracy"] > 0.8
        assert outcome.gate in (GateOutcome.PASSED, GateOutcome.FAILED)
        assert outcome.gate_reason
        assert outcome.aliases_set == ([CHALLENGER] if outcome.gate == GateOutcome.PASSED else [])
        assert versions_of_job(trained_registry, name, job_id) == [outcome.version]
        tags = client.get_model_version(name, outcome.version).tags
        assert set(tags) >= LINEAGE_TAGS
        assert tags[VersionTag.JOB_ID] == job_id


@pytest.mark.integration
@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        (
            {"params": {"models": {"random_forest": {"n_estimators": -3}}}},
            "params.models.random_forest.n_estimators",
        ),
        # The gateway refuses these too; a job sent another way must not get past the worker.
        ({"params": {"data": {"path": ".env"}}}, "params.data"),
        (
            {"params": {"models": {"random_forest": {"registered_name": "x"}}}},
            "params.models.random_forest.registered_name",
        ),
        ({"data_rev": "--output=/tmp/x"}, "data_rev"),
        ({"data_rev": "HEAD~3..HEAD"}, "data_rev"),
        ({"data_rev": "no-such-revision"}, "no-such-revision"),
    ],
    ids=["out-of-bounds", "data-path", "model-name", "option", "range", "unknown-revision"],
)
def test_invalid_requests_fail_at_once_without_retry(
    trainer_worker: ManagedProcess,
    redis_url: str,
    watch: Any,
    request_kwargs: dict[str, Any],
    field: str,
) -> None:
    job_id = send_job(redis_url, **request_kwargs)

    job = watch(job_id).finished(120, trainer_worker)

    assert job.status is JobStatus.failed
    assert job.deliveries == 1
    assert job.error is not None
    assert field in job.error
    assert job.result is None


@pytest.mark.integration
def test_a_job_whose_worker_died_on_every_delivery_ends_failed_as_poison(
    trainer_worker: ManagedProcess, redis_url: str, trained_registry: str, watch: Any
) -> None:
    # The record of a job that was running each time its worker died (as an out-of-memory
    # kill leaves it): this delivery must not take the worker down once more.
    job_id = str(uuid.uuid4())
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.hset(
        KEYS.record(job_id),
        mapping={
            **record_fields(
                status=JobStatus.running,
                submitted_at=datetime.now(UTC),
                deliveries=MAX_DELIVERIES,
            ),
            "lost": str(MAX_DELIVERIES - 1),
        },
    )
    client.close()
    sender = Celery("test-sender", broker=redis_url, set_as_current=False)
    sender.conf.broker_transport_options = {"global_keyprefix": KEYS.broker_prefix}
    sender.send_task(RETRAIN_TASK, kwargs={}, task_id=job_id, queue=KEYS.queue)
    sender.close()

    job = watch(job_id).finished(60, trainer_worker)

    assert job.status is JobStatus.failed
    assert job.error is not None
    assert "Poison job" in job.error
    assert job.deliveries == MAX_DELIVERIES + 1
    assert versions_of_job(trained_registry, LOGISTIC_REGRESSION, job_id) == []


@pytest.mark.integration
@pytest.mark.slow
def test_job_of_a_killed_worker_runs_again_within_a_minute_and_keeps_its_version(
    logs_dir: Path, trained_registry: str, watch: Any
) -> None:
    # A broker of its own, so the short visibility timeout touches no other test's jobs.
    redis_process, redis_url = start_redis(logs_dir)
    workers: list[ManagedProcess] = []
    try:
        first = start_worker(
            logs_dir, redis_url, trained_registry, name="doomed-worker", **FAST_REDELIVERY
        )
        workers.append(first)
        job_id = send_job(redis_url, params={"models": {"random_forest": {"n_estimators": 50}}})
        watcher = watch(job_id, redis_url)
        # Step 6 trains the second model: the first one is registered and gated by then, and
        # registering the second takes seconds, far longer than one poll.
        watcher.wait(lambda job: job.progress is not None and job.progress.step >= 6, 120, first)

        first.kill()  # SIGKILL the whole process group: nothing is left to requeue the job.
        killed_at = time.monotonic()
        [registered_before] = versions_of_job(trained_registry, LOGISTIC_REGRESSION, job_id)
        second = start_worker(
            logs_dir, redis_url, trained_registry, name="rescue-worker", **FAST_REDELIVERY
        )
        workers.append(second)
        watcher.wait(lambda job: job.deliveries == 2, 60, second)
        redelivered_after = time.monotonic() - killed_at
        job = watcher.wait(lambda job: job.status in TERMINAL_STATUSES, 240, second)

        assert job.status is JobStatus.succeeded, job.error
        # Came back through redelivery once the heartbeat stopped, well within a minute.
        assert 5 < redelivered_after < 60
        assert job.result is not None
        # The rerun reused the version the dead worker registered: one job, one version.
        assert job.result.models[LOGISTIC_REGRESSION].version == registered_before
        for name, outcome in job.result.models.items():
            assert versions_of_job(trained_registry, name, job_id) == [outcome.version]
    finally:
        for worker in workers:
            # The job has ended (or the test failed): nothing to hand back, no soft shutdown
            # to wait for.
            worker.kill()
        redis_process.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_stopping_worker_hands_its_job_back_at_once(
    logs_dir: Path, trained_registry: str, watch: Any
) -> None:
    redis_process, redis_url = start_redis(logs_dir)
    # The default visibility timeout: only a hand-back brings the job back this fast.
    handing_back = {**FAST_REDELIVERY, "TRAINER_VISIBILITY_TIMEOUT_S": "40"}
    workers: list[ManagedProcess] = []
    try:
        first = start_worker(
            logs_dir, redis_url, trained_registry, name="stopping-worker", **handing_back
        )
        workers.append(first)
        job_id = send_job(redis_url, params={"models": {"random_forest": {"n_estimators": 50}}})
        watcher = watch(job_id, redis_url)
        watcher.wait(lambda job: job.status is JobStatus.running, 120, first)

        stopped_at = time.monotonic()
        # SIGTERM to the worker alone: soft shutdown, then its pool ends and the job goes back.
        first.stop(timeout=30, whole_group=False)
        stopped_after = time.monotonic() - stopped_at
        handed_back = watcher.poll()
        second = start_worker(
            logs_dir, redis_url, trained_registry, name="next-worker", **handing_back
        )
        workers.append(second)
        # Well before the 40 s visibility timeout could have brought it back.
        watcher.wait(lambda job: job.deliveries == 2, 30, second)
        job = watcher.finished(240, second)

        assert stopped_after < 15
        assert handed_back is not None
        assert handed_back.status is JobStatus.queued
        assert job.status is JobStatus.succeeded, job.error
        assert job.deliveries == 2
    finally:
        for worker in workers:
            # The job has ended (or the test failed): nothing to hand back, no soft shutdown
            # to wait for.
            worker.kill()
        redis_process.stop()
