"""Gateway settings, read from the environment (prefix GATEWAY_) and `.env`.

Names other tools read keep their own names: `REDIS_URL`, `API_TOKEN`, `MLFLOW_TRACKING_URI`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from iris_shared.feedback import DEFAULT_FEEDBACK_WINDOW_S
from iris_shared.registry import DEFAULT_MODEL
from iris_shared.settings import (
    HTTPServiceSettings,
    jobs_namespace_field,
    mlflow_password_field,
    redis_password_field,
    shared_variable,
)

# Tokens copied from examples and tutorials; refused outside development.
PLACEHOLDER_TOKENS = frozenset({"changeme", "change-me", "changethis", "secret", "token", "test"})
MIN_TOKEN_LENGTH = 16


class GatewaySettings(HTTPServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    port: int = Field(default=8002, ge=1, le=65535, description="Port to listen on.")

    environment: Literal["development", "production"] = Field(
        default="production",
        description="'development' accepts a short or placeholder API_TOKEN; nothing else does.",
    )
    predictor_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Base URL of the predictor; several replicas as a comma-separated list, or "
        "as a host name that resolves to all of them (compose's --scale): predictions are "
        "spread over the ready ones.",
    )
    predictor_refresh_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the predictor's names are resolved again and each replica's "
        "readiness checked.",
    )
    predictor_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for the predictor's answer."
    )
    connect_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="Longest wait to connect to the predictor or MLflow; short so a dead "
        "upstream is reported at once.",
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        description="Connections to the predictor per process, at most; requests beyond wait "
        "for one (within the predictor timeout).",
    )
    redis_url: str = shared_variable(
        "REDIS_URL",
        "GATEWAY_",
        default="redis://127.0.0.1:6379/0",
        description="Celery broker; also holds the job records.",
    )
    redis_password: SecretStr | None = redis_password_field("GATEWAY_")
    redis_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="Socket timeout for Redis; short so a dead Redis gives a quick 503.",
    )
    api_token: SecretStr = shared_variable(
        "API_TOKEN",
        "GATEWAY_",
        default=SecretStr(""),
        description="Bearer token required by POST /retrain and POST /promote.",
    )
    mlflow_tracking_uri: str = shared_variable(
        "MLFLOW_TRACKING_URI",
        "GATEWAY_",
        default="http://127.0.0.1:5002",
        description="MLflow server whose REST API POST /promote calls.",
    )
    mlflow_tracking_username: str | None = shared_variable(
        "MLFLOW_TRACKING_USERNAME",
        "GATEWAY_",
        default=None,
        description="MLflow user POST /promote acts as, when MLflow requires credentials.",
    )
    mlflow_tracking_password: SecretStr | None = mlflow_password_field("GATEWAY_")
    mlflow_timeout_s: float = Field(default=10.0, gt=0, description="Per MLflow REST call.")
    default_model_name: str = Field(
        default=DEFAULT_MODEL,
        description="Registered model POST /promote moves when the body names none.",
    )
    jobs_namespace: str = jobs_namespace_field("GATEWAY_")
    job_ttl_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="How long a job's record is kept after its submission.",
    )
    retrain_max_pending: int = shared_variable(
        "RETRAIN_MAX_PENDING",
        "GATEWAY_",
        default=3,
        ge=1,
        description="Retrain jobs queued or running at most; POST /retrain answers 429 beyond.",
    )
    retrain_retry_after_s: int = Field(
        default=60,
        ge=1,
        description="The Retry-After of a 429 from POST /retrain: about one training run.",
    )
    feedback_window_s: int = shared_variable(
        "FEEDBACK_WINDOW",
        "GATEWAY_",
        default=DEFAULT_FEEDBACK_WINDOW_S,
        ge=60,
        description="Seconds after an answer during which POST /feedback takes its label (the "
        "predictor keeps answers as long; the same variable for both).",
    )
    live_accuracy_window: int = Field(
        default=200,
        ge=1,
        description="iris_live_accuracy is the share of right answers among this many of a "
        "version's last labelled answers.",
    )
    max_labelled_rows: int = Field(
        default=100_000,
        ge=1,
        description="Labelled rows kept for `iris-mlops data add-feedback` at most; beyond, "
        "labels still count for accuracy but their rows are not kept.",
    )

    @field_validator("predictor_url", "mlflow_tracking_uri")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return ",".join(url.strip().rstrip("/") for url in value.split(","))

    @property
    def predictor_urls(self) -> list[str]:
        return [url for url in self.predictor_url.split(",") if url]

    @model_validator(mode="after")
    def _refuse_weak_token(self) -> GatewaySettings:
        token = self.api_token.get_secret_value()
        if not token.strip():
            raise ValueError(
                "API_TOKEN is empty: set a secret token for POST /retrain and /promote"
            )
        if self.environment != "development" and (
            token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH
        ):
            raise ValueError(
                f"API_TOKEN is a placeholder or shorter than {MIN_TOKEN_LENGTH} characters; "
                "set a real secret (or GATEWAY_ENVIRONMENT=development for local use)"
            )
        return self


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()
