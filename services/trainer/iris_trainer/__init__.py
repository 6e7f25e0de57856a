"""The trainer: training pipeline, Celery retrain worker and the `iris-mlops` CLI."""

import os

# MLflow's client waits 120 s per request and retries for minutes by default, so a dead MLflow
# would hold a job (and its worker) that long before the retry policy of iris_trainer.tasks
# could act. Bounded here, for the worker and the CLI alike; the environment can say otherwise.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
