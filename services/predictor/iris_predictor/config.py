"""Predictor settings, read from the environment (prefix PREDICTOR_) and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from iris_shared.feedback import DEFAULT_FEEDBACK_WINDOW_S
from iris_shared.registry import CHALLENGER, DEFAULT_MODEL, PRODUCTION
from iris_shared.schemas import MAX_BATCH_ROWS
from iris_shared.settings import (
    HTTPServiceSettings,
    jobs_namespace_field,
    mlflow_password_field,
    redis_password_field,
    shared_variable,
)

MIB = 1024 * 1024


class PredictorSettings(HTTPServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PREDICTOR_", env_file=".env", extra="ignore")

    port: int = Field(default=8001, ge=1, le=65535, description="Port to listen on.")

    mlflow_tracking_uri: str = shared_variable(
        "MLFLOW_TRACKING_URI",
        "PREDICTOR_",
        default="http://127.0.0.1:5002",
        description="The MLflow server holding the registry and the model artefacts.",
    )
    mlflow_tracking_password: SecretStr | None = mlflow_password_field("PREDICTOR_")
    model_name: str = Field(default=DEFAULT_MODEL, description="Registered model to serve.")
    model_alias: str = Field(default=PRODUCTION, description="Alias to follow.")
    poll_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between two checks of the alias."
    )
    mlflow_probe_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long a call to MLflow waits for its connection: an MLflow that is "
        "down is noticed at once instead of after retries.",
    )
    cache_dir: Path = Field(
        default=Path(".cache/predictor"),
        description="Local copy of the last loaded model, served when MLflow is unreachable.",
    )
    prediction_log_dir: Path = Field(
        default=Path("prediction-logs"), description="Folder of predictions.jsonl."
    )
    prediction_log_max_bytes: int = Field(
        default=50 * MIB, gt=0, description="Size at which predictions.jsonl is rotated."
    )
    prediction_log_backup_count: int = Field(
        default=5, ge=0, description="Rotated prediction log files kept."
    )
    prediction_log_queue_size: int = Field(
        default=100_000,
        gt=0,
        description="Prediction log lines waiting to be written; beyond it lines are dropped "
        "(and counted) rather than slowing requests down.",
    )
    prediction_log_max_backlog_rows: int = Field(
        default=100_000,
        gt=0,
        description="Rows answered but not yet logged beyond which new requests wait for the "
        "log to catch up: answers never outrun the log by more, so memory stays bounded and "
        "no row goes unlogged under sustained load.",
    )
    max_batch_rows: int = Field(
        default=MAX_BATCH_ROWS, gt=0, description="Rows per /predict/batch."
    )
    max_queued_rows: int = Field(
        default=50_000,
        gt=0,
        description="Rows waiting for the model in this process; beyond it /predict answers 503 "
        "at once rather than queueing work that would answer too late.",
    )
    challenger_alias: str = Field(
        default=CHALLENGER,
        description="Alias whose version scores the same inputs after each answer (shadow "
        "scoring), to compare with production; empty turns shadow scoring off.",
    )
    shadow_queue_size: int = Field(
        default=256,
        gt=0,
        description="Answered requests waiting for the shadow model; beyond it shadow work is "
        "dropped (and counted), never slowing a live request.",
    )
    drift_window_rows: int = Field(
        default=2000,
        ge=100,
        description="Recent input rows compared with the training data's profile (PSI).",
    )
    drift_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between two drift scores."
    )
    redis_url: str | None = shared_variable(
        "REDIS_URL",
        "PREDICTOR_",
        default=None,
        description="Where answered predictions are kept for feedback (POST /feedback on the "
        "gateway joins labels with them); unset keeps none.",
    )
    redis_password: SecretStr | None = redis_password_field("PREDICTOR_")
    jobs_namespace: str = jobs_namespace_field("PREDICTOR_")
    feedback_window_s: int = shared_variable(
        "FEEDBACK_WINDOW",
        "PREDICTOR_",
        default=DEFAULT_FEEDBACK_WINDOW_S,
        ge=60,
        description="Seconds an answered prediction stays joinable with its label.",
    )
    max_stored_predictions: int = Field(
        default=200_000,
        ge=1,
        description="Answered requests kept for feedback at most (the oldest go first).",
    )
    store_max_bytes: int = Field(
        default=256 * MIB,
        ge=MIB,
        description="Bytes of Redis the kept answers may take at most, counting each answer's "
        "stored bytes and an estimate of Redis' own overhead per key (the oldest go first): "
        "with the count and the feedback window, what bounds Redis' memory whatever clients "
        "send.",
    )
    store_max_rows: int = Field(
        default=1000,
        ge=1,
        description="Rows of one batch kept for feedback (the first ones); the answer's "
        "`feedback_rows` says how many.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared secret of the MLflow webhook; POST /webhooks/mlflow exists only "
        "when it is set.",
    )
    webhook_max_age_s: int = Field(
        default=300, gt=0, description="Oldest webhook timestamp accepted (replay protection)."
    )

    @field_validator("webhook_secret", "redis_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # `PREDICTOR_WEBHOOK_SECRET=` in .env must disable the receiver, not sign with "".
        return None if value == "" else value

    @field_validator("cache_dir", "prediction_log_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Resolved once against the start-up folder: MLflow hands back absolute download
        # paths, and cache bookkeeping compares them with this folder.
        return value.resolve()


@lru_cache
def get_settings() -> PredictorSettings:
    return PredictorSettings()
