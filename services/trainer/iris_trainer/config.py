"""Trainer settings, read from the environment (prefix TRAINER_) and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from iris_shared.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINER_", env_file=".env", extra="ignore")

    repo_root: Path = Field(
        default_factory=Path.cwd,
        description="The git/DVC checkout holding params.yaml and data/ (the current folder).",
    )
    params_file: Path = Field(default=Path("params.yaml"), description="Relative to repo_root.")
    reports_dir: Path = Field(default=Path("reports"), description="Metrics files for DVC.")
    mlflow_tracking_uri: str = Field(
        default="http://127.0.0.1:5002",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "TRAINER_MLFLOW_TRACKING_URI"),
        description="The MLflow server every client talks to over HTTP.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "TRAINER_REDIS_URL"),
        description="Celery broker and result backend.",
    )
    task_time_limit_s: int = Field(default=1800, description="Hard limit of one retrain job.")
    task_soft_time_limit_s: int = Field(default=1500, description="Soft limit (raises in task).")
    visibility_timeout_s: int = Field(
        default=3600,
        description="Seconds before Redis redelivers an unacknowledged job; must exceed the "
        "longest job, or a healthy worker's job runs twice.",
    )

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else self.repo_root / relative


@lru_cache
def get_settings() -> TrainerSettings:
    return TrainerSettings()
