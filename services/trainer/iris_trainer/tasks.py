"""Celery entry points of the trainer. They hold no logic: they call the pipeline, and write
the job's record (iris_trainer.job_record) as it goes: running, progress, succeeded or failed.

`trainer.retrain` is sent by name (the gateway never imports this module). Failures are of
three kinds:

- expected (a request outside the allow-list, data that fails validation or cannot be read,
  a production version the gate cannot load safely): retrying cannot help, so the job fails
  at once with `TrainingJobFailed` and a clear message that never quotes the data;
- transient (MLflow unreachable, or answering 5xx): retried with backoff, at most 3 times;
  the retry reuses any version the job already registered;
- anything else is a bug: logged with its traceback and the job fails.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
import requests
from celery import Task
from mlflow.exceptions import MlflowException, RestException
from pydantic import ValidationError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from iris_shared.jobs import RETRAIN_TASK, JobKeys, RetrainRequest, TrainingResult
from iris_shared.logging import request_id_var
from iris_trainer.celery_app import app, stop_as_system_exit
from iris_trainer.config import get_settings, get_worker_settings
from iris_trainer.job_record import JobRecorder, Verdict
from iris_trainer.pipeline.params import describe_errors
from iris_trainer.pipeline.run import TrainingRefused, train_from_settings

logger = logging.getLogger(__name__)

MAX_RETRIES = 3
# 5, 10, 20 s: a waiting retry must come due well within the visibility timeout (40 s), or
# Redis hands its message out a second time.
RETRY_BACKOFF_S = 5


class TrainingJobFailed(Exception):
    """An expected failure of a retrain job (bad parameters or data, an unsafe production
    version); retrying cannot help."""


@lru_cache
def job_recorder() -> JobRecorder:
    """One per worker process, made where the task runs (after the pool forked)."""
    worker = get_worker_settings()
    return JobRecorder(
        redis.Redis.from_url(
            worker.broker_url,
            socket_timeout=10,
            socket_connect_timeout=5,
            # Rides over a Redis restart (down, then loading its append-only file) so that a
            # job's end is still written.
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.2), retries=15),
        ),
        JobKeys(worker.jobs_namespace),
        worker.heartbeat_interval_s,
    )


def is_transient(exc: BaseException) -> bool:
    """Whether MLflow failed in a way that may pass: unreachable, timed out, or a 5xx answer."""
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, RestException):
        return int(exc.get_http_status_code()) >= 500
    if isinstance(exc, MlflowException):
        # MLflow wraps connection failures and non-JSON 5xx answers in a bare MlflowException
        # whose message starts like this; other MlflowExceptions are client-side mistakes.
        wrapped = str(exc.message).startswith("API request to")
        return wrapped and int(exc.get_http_status_code()) >= 500
    return False


# throws: an expected failure is logged by Celery as one line, not as an unexpected traceback.
@app.task(name=RETRAIN_TASK, bind=True, max_retries=MAX_RETRIES, throws=(TrainingJobFailed,))
def retrain(
    self: Task, *, data_rev: str | None = None, params: dict[str, Any] | None = None
) -> Any:
    """Train, register and gate every candidate model; the outcome goes to the job record."""
    # The job id plays the request id in the worker's logs, tying them to GET /jobs/{id}.
    token = request_id_var.set(self.request.id)
    try:
        return _retrain(self, data_rev=data_rev, params=params)
    finally:
        request_id_var.reset(token)


def _retrain(task: Task, *, data_rev: str | None, params: dict[str, Any] | None) -> Any:
    job_id: str = task.request.id
    record = job_recorder()
    verdict, deliveries = record.start(job_id)
    job = {"job_id": job_id, "data_rev": data_rev, "delivery": deliveries}
    if verdict is Verdict.finished:
        logger.info("Retrain job already ended; not run again", extra=job)
        return None
    if verdict is Verdict.poison:
        logger.error("Poison retrain job: failed without running", extra=job)
        return None
    logger.info("Retrain job started", extra=job)
    delivery_tag = (task.request.properties or {}).get("delivery_tag")
    with record.heartbeat(job_id, delivery_tag):
        try:
            with stop_as_system_exit():
                result = _run(task, data_rev, params, record)
                record.succeeded(job_id, result)
        except TrainingJobFailed as exc:
            logger.warning("Retrain job refused", extra={**job, "reason": str(exc)})
            record.failed(job_id, str(exc))
            raise
        except Exception as exc:
            if is_transient(exc) and task.request.retries < MAX_RETRIES:
                countdown = RETRY_BACKOFF_S * 2**task.request.retries
                logger.warning(
                    "MLflow unavailable; retrying the retrain job",
                    extra={**job, "reason": str(exc), "retry_in_s": countdown},
                )
                record.waiting_for_retry(job_id, f"MLflow unavailable; retrying in {countdown} s")
                raise task.retry(exc=exc, countdown=countdown) from exc
            logger.exception("Retrain job failed", extra=job)
            record.failed(job_id, f"{type(exc).__name__}: {exc}"[:1000])
            raise
        except SystemExit:
            # A stopping worker ends its pool processes with SIGTERM, which billiard turns
            # into SystemExit (stop_as_system_exit): the job goes back to the queue (acks_late,
            # billiard reports no result once its handler ran), and the mark keeps
            # its next delivery from counting as lost to a crash (SIGKILL leaves none).
            logger.info("Retrain job handed back: the worker is stopping", extra=job)
            record.handed_back(job_id)
            raise
    logger.info(
        "Retrain job succeeded",
        extra={
            **job,
            "versions": {n: o.version for n, o in result.models.items()},
            "stage_seconds": result.stage_seconds,
        },
    )
    return None


def _run(
    task: Task, data_rev: str | None, params: dict[str, Any] | None, record: JobRecorder
) -> TrainingResult:
    try:
        # The gateway validated this already; a job sent another way must pass the same check.
        request = RetrainRequest.model_validate({"data_rev": data_rev, "params": params})
    except ValidationError as exc:
        raise TrainingJobFailed(f"Invalid retrain request: {describe_errors(exc)}") from exc
    try:
        return train_from_settings(
            get_settings(),
            data_rev=request.data_rev,
            overrides=request.params.model_dump() if request.params is not None else None,
            job_id=task.request.id,
            on_progress=lambda progress: record.progress(task.request.id, progress),
        )
    except TrainingRefused as exc:
        raise TrainingJobFailed(str(exc)) from exc
