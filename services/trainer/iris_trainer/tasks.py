"""Celery entry points of the trainer. They hold no logic: they call the pipeline.

`trainer.retrain` is sent by name (the gateway never imports this module). Failures are of
three kinds:

- expected (invalid parameters, data that fails validation, data that cannot be read):
  retrying cannot help, so the job fails at once with `TrainingJobFailed` and a clear message;
- transient (MLflow unreachable, or answering 5xx): retried with backoff, at most 3 times;
- anything else is a bug: logged with its traceback and the job fails.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from celery import Task
from mlflow.exceptions import MlflowException, RestException

from iris_shared.jobs import RETRAIN_TASK, JobProgress
from iris_shared.logging import request_id_var
from iris_trainer.celery_app import app
from iris_trainer.config import get_settings
from iris_trainer.pipeline import run_training
from iris_trainer.pipeline.data import DataUnavailableError
from iris_trainer.pipeline.params import InvalidParamsError, load_params
from iris_trainer.pipeline.validation import DataValidationError

logger = logging.getLogger(__name__)

MAX_RETRIES = 3
RETRY_BACKOFF_S = 10
PROGRESS_STATE = "PROGRESS"


class TrainingJobFailed(Exception):
    """An expected failure of a retrain job (bad parameters or data); retrying cannot help.

    Raised with a single message argument so it survives Celery's JSON result serialization.
    """


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


@app.task(name=RETRAIN_TASK, bind=True, max_retries=MAX_RETRIES)
def retrain(
    self: Task, *, data_rev: str | None = None, params: dict[str, Any] | None = None
) -> Any:
    """Train, register and gate every candidate model; return the `TrainingResult` as JSON."""
    # The job id plays the request id in the worker's logs, tying them to GET /jobs/{id}.
    token = request_id_var.set(self.request.id)
    try:
        return _retrain(self, data_rev=data_rev, params=params)
    finally:
        request_id_var.reset(token)


def _retrain(task: Task, *, data_rev: str | None, params: dict[str, Any] | None) -> Any:
    settings = get_settings()

    def report_progress(progress: JobProgress) -> None:
        task.update_state(state=PROGRESS_STATE, meta=progress.model_dump(mode="json"))

    job = {"job_id": task.request.id, "data_rev": data_rev, "attempt": task.request.retries + 1}
    logger.info("Retrain job started", extra=job)
    try:
        training_params = load_params(settings.path(settings.params_file), params)
        result = run_training(
            training_params,
            settings.repo_root,
            data_rev=data_rev,
            tracking_uri=settings.mlflow_tracking_uri,
            on_progress=report_progress,
        )
    except InvalidParamsError as exc:
        logger.warning("Retrain job refused: invalid parameters", extra={**job, "reason": str(exc)})
        raise TrainingJobFailed(str(exc)) from exc
    except DataValidationError as exc:
        logger.warning("Retrain job refused: data failed validation", extra=job)
        raise TrainingJobFailed(
            f"The data failed validation; nothing was trained. {exc.report.summary()}"
        ) from exc
    except DataUnavailableError as exc:
        logger.warning("Retrain job refused: data unavailable", extra={**job, "reason": str(exc)})
        raise TrainingJobFailed(str(exc)) from exc
    except Exception as exc:
        if is_transient(exc) and task.request.retries < MAX_RETRIES:
            countdown = RETRY_BACKOFF_S * 2**task.request.retries
            logger.warning(
                "MLflow unavailable; retrying the retrain job",
                extra={**job, "reason": str(exc), "retry_in_s": countdown},
            )
            raise task.retry(exc=exc, countdown=countdown) from exc
        logger.exception("Retrain job failed", extra=job)
        raise
    logger.info(
        "Retrain job succeeded",
        extra={**job, "versions": {n: o.version for n, o in result.models.items()}},
    )
    return result.model_dump(mode="json")
