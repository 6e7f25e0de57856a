"""The Celery app of the retrain worker: Redis as broker and result backend.

Run it from the repository root (the checkout holding params.yaml and data/):

    celery -A iris_trainer.celery_app worker -Q training --concurrency 1 --loglevel INFO

Reliability choices, and why:

- `task_acks_late` + `task_reject_on_worker_lost` + prefetch 1: a job is acknowledged only
  once it has finished, so a worker that dies mid-job leaves it on the broker for another.
- After a SIGKILL of the whole worker nothing is left to requeue the job: Redis hands it out
  again only after `visibility_timeout`, and kombu only looks for abandoned jobs every
  `unacked_restore_interval` x `unacked_restore_throttle` seconds. The visibility timeout must
  exceed the longest job, or a healthy worker's job runs twice.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from iris_shared.jobs import TRAINING_QUEUE
from iris_shared.logging import configure_logging
from iris_shared.settings import ServiceSettings
from iris_trainer.config import TrainerSettings, get_settings


class WorkerSettings(ServiceSettings):
    """Worker-only settings (prefix TRAINER_); the pipeline's live in iris_trainer.config."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", env_file=".env", extra="ignore")

    worker_concurrency: int = Field(
        default=1, ge=1, description="Jobs run at once; training is CPU-bound, so one per core."
    )
    unacked_restore_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="How often kombu looks for jobs abandoned by a dead worker.",
    )
    unacked_restore_throttle_s: float = Field(
        default=10.0,
        ge=0,
        description="Minimum seconds between two restores of abandoned jobs.",
    )
    result_expires_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long Redis keeps each job's state and result (GATEWAY_JOB_TTL_S should "
        "not exceed it).",
    )


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()


def celery_config(trainer: TrainerSettings, worker: WorkerSettings) -> dict[str, Any]:
    return {
        "broker_url": trainer.redis_url,
        "result_backend": trainer.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": trainer.visibility_timeout_s,
            "unacked_restore_interval": worker.unacked_restore_interval_s,
            "unacked_restore_throttle": worker.unacked_restore_throttle_s,
        },
        "task_default_queue": TRAINING_QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": worker.worker_concurrency,
        "task_time_limit": trainer.task_time_limit_s,
        "task_soft_time_limit": trainer.task_soft_time_limit_s,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_track_started": True,
        "result_extended": True,
        "result_expires": worker.result_expires_s,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def create_celery_app(
    trainer: TrainerSettings | None = None, worker: WorkerSettings | None = None
) -> Celery:
    app = Celery("trainer", include=["iris_trainer.tasks"])
    app.conf.update(celery_config(trainer or get_settings(), worker or get_worker_settings()))
    return app


@setup_logging.connect
def _configure_json_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connecting to this signal stops Celery from installing its own plain-text handlers.
    if isinstance(loglevel, int):
        level = logging.getLevelName(loglevel)
    else:
        level = loglevel or get_settings().log_level
    configure_logging("trainer", level)


# The celery CLI (`-A iris_trainer.celery_app`) needs a module-level app; settings are read
# here once, through the factory, and never elsewhere at import time.
app = create_celery_app()
