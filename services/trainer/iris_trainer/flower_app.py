"""The trainer's Celery app as Flower loads it: `celery -A iris_trainer.flower_app --quiet
flower --logging=none ...` (supervisord, compose, Kubernetes).

The worker's broker and settings, so Flower reads the queue and the task events under the
deployment's key prefix, but not its task code: Flower reads events, runs `--read_only` (it
sends no task), and the tasks would load the training pipeline (MLflow, scikit-learn,
pandas) into its memory and its start for nothing. Its log is JSON lines, as every
service's: with `--logging=none` tornado leaves logging alone, and importing this module
(which only Flower does) sets it up.
"""

from __future__ import annotations

import os

from iris_shared.logging import configure_logging
from iris_trainer.celery_app import create_celery_app

configure_logging("flower", os.environ.get("FLOWER_LOG_LEVEL", "INFO").upper())
app = create_celery_app(tasks=False)

__all__ = ["app"]
