"""Trainer settings, read from the environment (prefix TRAINER_) and `.env`.

`TrainerSettings` is what the pipeline, the CLI and the task read; `WorkerSettings` holds the
Celery worker's own knobs. Names other tools read keep their own names: `MLFLOW_TRACKING_URI`,
`REDIS_URL`, `API_TOKEN`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from iris_shared.settings import (
    ServiceSettings,
    export_mlflow_password,
    jobs_namespace_field,
    mlflow_password_field,
    redis_password_field,
    shared_variable,
    with_password,
)


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", env_file=".env", extra="ignore")

    repo_root: Path = Field(
        default_factory=Path.cwd,
        description="The git/DVC checkout holding params.yaml and data/ (the current folder).",
    )
    params_file: Path = Field(default=Path("params.yaml"), description="Relative to repo_root.")
    reports_dir: Path = Field(default=Path("reports"), description="Metrics files for DVC.")
    prediction_log_dir: Path = Field(
        default=Path("prediction-logs"),
        validation_alias="PREDICTOR_PREDICTION_LOG_DIR",
        description="The predictor's prediction log folder, which `iris-mlops report drift` "
        "reads: the predictor's own variable (make up writes it to .env; compose sets it).",
    )
    mlflow_tracking_uri: str = shared_variable(
        "MLFLOW_TRACKING_URI",
        "TRAINER_",
        default="http://127.0.0.1:5002",
        description="The MLflow server every client talks to over HTTP.",
    )
    mlflow_tracking_password: SecretStr | None = mlflow_password_field("TRAINER_")
    gateway_url: str = Field(
        default="http://127.0.0.1:8002",
        description="The gateway `iris-mlops promote` asks to move `production` (POST /promote).",
    )
    api_token: SecretStr = shared_variable(
        "API_TOKEN",
        "TRAINER_",
        default=SecretStr(""),
        description="The gateway's bearer token, sent by `iris-mlops promote`.",
    )

    @field_validator("gateway_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.repo_root / relative


class WorkerSettings(ServiceSettings):
    """The Celery worker's broker, limits and reliability knobs (same TRAINER_ prefix)."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", env_file=".env", extra="ignore")

    redis_url: str = shared_variable(
        "REDIS_URL",
        "TRAINER_",
        default="redis://127.0.0.1:6379/0",
        description="Celery broker; also holds the job records.",
    )
    redis_password: SecretStr | None = redis_password_field("TRAINER_")
    jobs_namespace: str = jobs_namespace_field("TRAINER_")
    worker_concurrency: int = Field(
        default=1, ge=1, description="Jobs run at once; training is CPU-bound, so one per core."
    )
    task_time_limit_s: int = Field(default=1800, description="Hard limit of one retrain job.")
    task_soft_time_limit_s: int = Field(default=1500, description="Soft limit (raises in task).")
    visibility_timeout_s: int = Field(
        default=40,
        ge=10,
        description="Seconds without a heartbeat after which Redis hands a job to another "
        "worker: a running job's heartbeat keeps it fresh, however long it runs.",
    )
    heartbeat_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often a running job beats (well under the visibility timeout).",
    )
    unacked_restore_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often kombu looks for jobs abandoned by a dead worker.",
    )
    unacked_restore_throttle_s: float = Field(
        default=1.0,
        ge=0,
        description="Look for abandoned jobs on every n-th of those checks only.",
    )
    soft_shutdown_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM, how long the running job gets to finish before it is handed "
        "back to the queue (the stop grace period of supervisord and compose exceeds it).",
    )

    @property
    def broker_url(self) -> str:
        """REDIS_URL with the password in it (Celery takes credentials only in the URL)."""
        return with_password(self.redis_url, self.redis_password)

    @model_validator(mode="after")
    def _heartbeat_beats_the_visibility_timeout(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 3 > self.visibility_timeout_s:
            raise ValueError(
                "TRAINER_HEARTBEAT_INTERVAL_S must be at most a third of "
                "TRAINER_VISIBILITY_TIMEOUT_S, or a healthy job is handed out twice"
            )
        return self


def _mlflow_secret(name: str, description: str) -> Any:
    """A secret of `iris-mlops bootstrap`: `NAME` or `TRAINER_NAME`, or the file
    SECRETS_DIR/name (lower case) in containers."""
    return shared_variable(name, "TRAINER_", default=None, description=description)


class BootstrapSettings(ServiceSettings):
    """What only `iris-mlops bootstrap` reads (same TRAINER_ prefix): MLflow's admin and the
    service users' passwords, and how long to wait for MLflow. Kept apart from
    `TrainerSettings` so that no long-running process ever holds the admin password."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_", env_file=".env", extra="ignore")

    mlflow_admin_username: str = Field(
        default="admin",
        description="MLflow's admin user (basic-auth app): the bootstrap creates the service "
        "users and their grants as this user.",
    )
    mlflow_admin_password: SecretStr | None = _mlflow_secret(
        "MLFLOW_ADMIN_PASSWORD",
        "Password of the admin user. Set, MLflow must require credentials and the bootstrap "
        "manages the service users; unset, MLflow must be open (make up).",
    )
    mlflow_trainer_password: SecretStr | None = _mlflow_secret(
        "MLFLOW_TRAINER_PASSWORD",
        "Password of MLflow user `trainer` (the trainer's mlflow_tracking_password).",
    )
    mlflow_gateway_password: SecretStr | None = _mlflow_secret(
        "MLFLOW_GATEWAY_PASSWORD",
        "Password of MLflow user `gateway` (the gateway's mlflow_tracking_password).",
    )
    mlflow_predictor_password: SecretStr | None = _mlflow_secret(
        "MLFLOW_PREDICTOR_PASSWORD",
        "Password of MLflow user `predictor` (the predictor's mlflow_tracking_password).",
    )
    bootstrap_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="How long the bootstrap waits for MLflow's /health before it gives up.",
    )


@lru_cache
def get_settings() -> TrainerSettings:
    settings = TrainerSettings()
    # Every trainer entry point (CLI, task) reads its settings here, before MLflow's client.
    export_mlflow_password(settings.mlflow_tracking_password)
    return settings


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()


def get_bootstrap_settings() -> BootstrapSettings:
    # Not cached: the admin password lives only as long as the command that needs it.
    return BootstrapSettings()
