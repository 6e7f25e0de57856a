"""The settings bases every service builds on."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from iris_shared.jobs import DEFAULT_JOBS_NAMESPACE, JOBS_NAMESPACE_PATTERN
from iris_shared.schemas import batch_body_limit

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def jobs_namespace_field(prefix: str) -> Any:
    """The deployment's namespace setting, `JOBS_NAMESPACE` (or `<prefix>JOBS_NAMESPACE`).

    Every service of a deployment must read the same value: it prefixes the retrain queue and
    every Redis key of the deployment (iris_shared.jobs, iris_shared.monitoring).
    """
    return Field(
        default=DEFAULT_JOBS_NAMESPACE,
        pattern=JOBS_NAMESPACE_PATTERN,
        validation_alias=AliasChoices("JOBS_NAMESPACE", f"{prefix}JOBS_NAMESPACE"),
        description="Prefix of the retrain queue and of every Redis key of this deployment "
        "(the same in every service); `make up` writes a unique one to .env.",
    )


class ServiceSettings(BaseSettings):
    """Reads the environment, then `.env`; each service adds its own prefixed fields."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    log_level: LogLevel = "INFO"


class HTTPServiceSettings(ServiceSettings):
    """How an HTTP service is served (read by `iris_shared.server`), under the service's prefix."""

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Server processes; one per core by default (Python runs one core each).",
    )
    max_concurrent_requests: int = Field(
        default=512,
        ge=1,
        description="Requests in flight per process; beyond it the answer is an immediate 503 "
        "with Retry-After instead of a growing queue.",
    )
    max_body_bytes: int = Field(
        default=batch_body_limit(),
        ge=1,
        description="Larger request bodies get 413; the default fits any valid batch of "
        "MAX_BATCH_ROWS rows, and every service uses the same.",
    )
    graceful_shutdown_s: int = Field(
        default=10,
        gt=0,
        description="On SIGTERM, how long in-flight requests get to finish before the process "
        "exits (the stop grace period of supervisord and compose must exceed it).",
    )
