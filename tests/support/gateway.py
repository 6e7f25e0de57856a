"""Fixtures that start the gateway as a real process (see tests/support/processes.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.core import JOBS_NAMESPACE
from tests.support.processes import VENV_BIN, ManagedProcess, free_port, http_ok, wait_until


def start_gateway(
    log_dir: Path,
    predictor_url: str,
    redis_url: str,
    tracking_uri: str,
    api_token: str,
    *,
    name: str | None = None,
    **env: str,
) -> tuple[ManagedProcess, str]:
    """Start `python -m iris_gateway` on a free port (one worker unless `env` says otherwise);
    wait for /healthz."""
    port = free_port()
    process = ManagedProcess(
        name or f"gateway-{port}",
        [str(VENV_BIN / "python"), "-m", "iris_gateway"],
        log_dir,
        env={
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_WORKERS": "1",
            "GATEWAY_PREDICTOR_URL": predictor_url,
            "REDIS_URL": redis_url,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "API_TOKEN": api_token,
            "JOBS_NAMESPACE": JOBS_NAMESPACE,
            # The suite's jobs share one worker; the cap itself is tested with its own gateway.
            "RETRAIN_MAX_PENDING": "20",
            **env,
        },
    )
    base_url = f"http://127.0.0.1:{port}"
    wait_until(http_ok(f"{base_url}/healthz"), 30, "gateway", process)
    return process, base_url


@pytest.fixture(scope="session")
def api_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def gateway_url(
    logs_dir: Path, predictor_url: str, redis_url: str, trained_registry: str, api_token: str
) -> Iterator[str]:
    """A gateway in front of the session predictor, Redis and MLflow (start `trainer_worker`
    too for jobs to run)."""
    process, url = start_gateway(
        logs_dir,
        predictor_url,
        redis_url,
        trained_registry,
        api_token,
        name="gateway",
        GATEWAY_WORKERS="2",
    )
    yield url
    process.stop()
