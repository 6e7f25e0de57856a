"""The settings bases every service builds on.

Settings come from the environment, then `.env`, then secret files: when `SECRETS_DIR` names a
folder (compose mounts its secrets at /run/secrets, Kubernetes a Secret volume), each secret
setting is read from the file named after its variable in lower case (`api_token`,
`redis_password`, `mlflow_tracking_password`), so a password never has to be an environment
variable or a command-line argument.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from iris_shared.jobs import DEFAULT_JOBS_NAMESPACE, JOBS_NAMESPACE_PATTERN
from iris_shared.schemas import batch_body_limit

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def shared_variable(name: str, prefix: str, **field: Any) -> Any:
    """A setting read from the variable every service of a deployment reads (`REDIS_URL`,
    `API_TOKEN`, `MLFLOW_TRACKING_URI`...), or from the service's own (`GATEWAY_REDIS_URL`)
    when one service must differ. `field`: the rest of the field (default, description...)."""
    return Field(validation_alias=AliasChoices(name, f"{prefix}{name}"), **field)


def jobs_namespace_field(prefix: str) -> Any:
    """The deployment's namespace setting, `JOBS_NAMESPACE` (or `<prefix>JOBS_NAMESPACE`).

    Every service of a deployment must read the same value: it prefixes the retrain queue and
    every Redis key of the deployment (iris_shared.jobs, iris_shared.feedback).
    """
    return shared_variable(
        "JOBS_NAMESPACE",
        prefix,
        default=DEFAULT_JOBS_NAMESPACE,
        pattern=JOBS_NAMESPACE_PATTERN,
        description="Prefix of the retrain queue and of every Redis key of this deployment "
        "(the same in every service); `make up` writes a unique one to .env.",
    )


SECRETS_DIR_ENV = "SECRETS_DIR"


def redis_password_field(prefix: str) -> Any:
    """The password of the Redis user named in `REDIS_URL` (`REDIS_PASSWORD`, or a secret file)."""
    return shared_variable(
        "REDIS_PASSWORD",
        prefix,
        default=None,
        description="Password of the Redis user in REDIS_URL (its username, if any, is in the "
        "URL); read from SECRETS_DIR/redis_password in containers.",
    )


def mlflow_password_field(prefix: str) -> Any:
    """The password of `MLFLOW_TRACKING_USERNAME` on an MLflow server with basic auth."""
    return shared_variable(
        "MLFLOW_TRACKING_PASSWORD",
        prefix,
        default=None,
        description="Password of MLFLOW_TRACKING_USERNAME when MLflow requires credentials "
        "(compose); read from SECRETS_DIR/mlflow_tracking_password in containers.",
    )


def export_mlflow_password(password: SecretStr | None) -> None:
    """Hand a password read from a secret file to MLflow's client, which reads only its own
    environment variable (`MLFLOW_TRACKING_PASSWORD`); it stays inside this process."""
    if password is not None and password.get_secret_value():
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password.get_secret_value())


def with_password(url: str, password: SecretStr | None) -> str:
    """`url` with `password` in it, for clients that take credentials only in the URL (Celery).

    The result holds a secret: pass it to the client, never to a log.
    """
    if password is None or not password.get_secret_value():
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    secret = quote(password.get_secret_value(), safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


class ServiceSettings(BaseSettings):
    """Reads the environment, then `.env`, then the files in `SECRETS_DIR`; each service adds
    its own prefixed fields."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    log_level: LogLevel = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Read when settings are built, not at import: tests and tools set it per process.
        secrets_dir = os.environ.get(SECRETS_DIR_ENV)
        sources = [init_settings, env_settings, dotenv_settings]
        if secrets_dir:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        return tuple(sources)


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
    body_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        validation_alias=AliasChoices("BODY_READ_TIMEOUT_S"),
        description="A request body must arrive within this many seconds, else 408 and the "
        "connection is closed (slow uploads never hold a request slot).",
    )
    header_read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        validation_alias=AliasChoices("HEADER_READ_TIMEOUT_S"),
        description="A request's headers must arrive within this many seconds of its first "
        "byte (or of the connection), else 408 and the connection is closed.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        validation_alias=AliasChoices("MAX_HEADER_BYTES"),
        description="Largest request line plus headers; beyond it 431 and the connection is "
        "closed.",
    )
    graceful_shutdown_s: int = Field(
        default=10,
        gt=0,
        description="On SIGTERM, how long in-flight requests get to finish before the process "
        "exits (the stop grace period of supervisord and compose must exceed it).",
    )
    worker_healthcheck_timeout_s: int = Field(
        default=60,
        gt=0,
        description="How long the master waits for a worker process to answer its health "
        "check before replacing it. A worker answers once its imports are done: on a busy "
        "machine that takes longer than uvicorn's 5 s, and replacing a worker that is still "
        "starting only starts its imports again. A worker that exits is replaced at once.",
    )
