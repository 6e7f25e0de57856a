"""The trainer's Celery app as Flower loads it: `celery -A iris_trainer.flower_app --quiet
flower --logging=none ...` (supervisord, compose, Kubernetes).

The worker's own app, so Flower reads the broker and the task events under the deployment's key
prefix; and Flower's log as JSON lines, as every service's. With `--logging=none` tornado leaves
logging alone, and importing this module (which only Flower does) sets it up.
"""

from __future__ import annotations

import os

from iris_shared.logging import configure_logging
from iris_trainer.celery_app import app

configure_logging("flower", os.environ.get("FLOWER_LOG_LEVEL", "INFO").upper())

__all__ = ["app"]
