"""The Celery app of the retrain worker: Redis as broker; the job records are the results.

Run it from the repository root (the checkout holding params.yaml and data/):

    celery -A iris_trainer.celery_app worker --concurrency 1 --loglevel INFO

It consumes `<JOBS_NAMESPACE>.training`, and every key Celery writes starts with the namespace:
two deployments sharing one Redis never run each other's jobs. Reliability choices, and why:

- `task_acks_late` + `task_reject_on_worker_lost` + prefetch 1: a job is acknowledged only
  once it has ended, so a worker that dies mid-job leaves it on the broker for another.
- After a SIGKILL of the whole worker nothing is left to requeue the job: Redis hands it out
  again once its delivery is older than `visibility_timeout`, which kombu checks every
  `unacked_restore_interval` x `unacked_restore_throttle` seconds. A running job's heartbeat
  keeps its delivery fresh (iris_trainer.job_record), so the timeout can be 40 s: a dead
  worker's job comes back within a minute, a healthy long one is never handed out twice.
- On SIGTERM (supervisord, compose, Kubernetes) the running job gets `soft_shutdown_timeout`
  to finish, then goes back to the queue at once (Celery's soft shutdown) instead of waiting
  for the visibility timeout. This needs `REMAP_SIGTERM=SIGQUIT` in the worker's environment
  (the image and supervisord set it): without it SIGTERM waits for the job to end.
- A job that runs again (redelivered, or retried after MLflow failed) finds the versions it
  registered already by their `job_id` tag and reuses them: one job never yields two versions.
- Task events are on, for the exporter that turns them into Prometheus metrics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billiard.common import terminate_handler_fired
from celery import Celery
from celery.signals import celeryd_after_setup, celeryd_init, import_modules, setup_logging

from iris_shared.jobs import JobKeys
from iris_shared.logging import configure_logging
from iris_shared.servable import forbid_unpickling
from iris_trainer.config import WorkerSettings, get_worker_settings


def celery_config(worker: WorkerSettings) -> dict[str, Any]:
    keys = JobKeys(worker.jobs_namespace)
    return {
        "broker_url": worker.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "global_keyprefix": keys.broker_prefix,
            "visibility_timeout": worker.visibility_timeout_s,
            "unacked_restore_interval": worker.unacked_restore_interval_s,
            "unacked_restore_throttle": worker.unacked_restore_throttle_s,
        },
        # The job record is the result: no result backend.
        "task_ignore_result": True,
        "task_default_queue": keys.queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": worker.worker_concurrency,
        "worker_soft_shutdown_timeout": worker.soft_shutdown_timeout_s,
        "worker_enable_soft_shutdown_on_idle": True,
        # A Redis blip must not cancel a running job: on Redis the ack is by delivery tag in
        # the unacked hash, so the job still acks after the reconnect (make soak restarts
        # Redis mid-job). Celery 6 flips the default; this keeps the behaviour explicit.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_time_limit": worker.task_time_limit_s,
        "task_soft_time_limit": worker.task_soft_time_limit_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def create_celery_app(worker: WorkerSettings | None = None, *, tasks: bool = True) -> Celery:
    """The trainer's app; with `tasks=False`, the same broker and settings without the task
    code, for a program that only reads the queue and the task events (Flower)."""
    app = Celery("trainer", include=["iris_trainer.tasks"] if tasks else [])
    app.conf.update(celery_config(worker or get_worker_settings()))
    return app


@import_modules.connect
def _forbid_unpickling(**_: Any) -> None:
    # Sent when a Celery program (the worker; Flower too, whose app has none) is about to import
    # the tasks, so before MLflow, and before the worker forks its pool, which inherits it.
    # Merely importing this module (tests, the CLI) leaves the process's environment alone.
    forbid_unpickling()


@setup_logging.connect
def _configure_json_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own plain-text handlers.
    if isinstance(loglevel, int):
        level = logging.getLevelName(loglevel)
    else:
        level = loglevel or get_worker_settings().log_level
    configure_logging("trainer", level)
    # MLflow writes each run's links to stdout as plain text; the worker's output is JSON lines.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


@contextmanager
def stop_as_system_exit() -> Iterator[None]:
    """Let the worker's stop reach a job's bookkeeping as SystemExit, whatever it became.

    A stopping worker ends its pool processes with SIGTERM, which billiard's handler turns into
    SystemExit wherever the job is. Raised inside a C extension, it can come out as another
    exception: matplotlib's pybind11 functions report an exception raised while converting
    their arguments as a TypeError ("incompatible function arguments"). Recorded as a failure,
    that ends a job that should go back to the queue; billiard says whether its handler ran.
    """
    try:
        yield
    except Exception as exc:
        if terminate_handler_fired():
            raise SystemExit(1) from exc
        raise


@celeryd_init.connect
def _json_logging_from_the_start(options: dict[str, Any] | None = None, **_: Any) -> None:
    # Sent before the worker checks its privileges: the warning about running as root comes
    # before setup_logging, and would be plain text.
    _configure_json_logging((options or {}).get("loglevel"))


@celeryd_after_setup.connect
def _log_start(sender: str, instance: Any, **_: Any) -> None:
    # What Celery's start-up banner says that matters, as a record: the worker runs with
    # --quiet, since the banner is plain text and its output is JSON lines.
    queues = ", ".join(sorted(instance.app.amqp.queues))
    logging.getLogger(__name__).info(
        "worker %s consumes %s with %s process(es)", sender, queues, instance.concurrency
    )


# The celery CLI (`-A iris_trainer.celery_app`) needs a module-level app; settings are read
# here once, through the factory, and never elsewhere at import time.
app = create_celery_app()
