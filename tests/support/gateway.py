"""Fixtures that start the gateway as a real process (see iris_devstack.processes)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from iris_devstack.processes import VENV_BIN, ManagedProcess, free_port, http_ok, wait_until
from tests.support.core import JOBS_NAMESPACE


def start_gateway(
    log_dir: Path,
    predictor_url: str,
    redis_url: str,
    tracking_uri: str,
    api_token: str,
    *,
    name: str | None = None,
    wait: bool = True,
    **env: str,
) -> tuple[ManagedProcess, str]:
    """Start `python -m iris_gateway` on a free port (one worker unless `env` says otherwise);
    wait for /healthz unless `wait` is false (then call `wait_healthy`)."""
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
    if wait:
        wait_healthy(process, base_url)
    return process, base_url


def wait_healthy(process: ManagedProcess, base_url: str) -> None:
    wait_until(http_ok(f"{base_url}/healthz"), 30, "gateway", process)


@pytest.fixture(scope="session")
def api_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="session")
def gateway_launch(
    logs_dir: Path,
    predictor_launch: tuple[ManagedProcess, str],
    redis_url: str,
    mlflow_server: str,
    api_token: str,
) -> Iterator[tuple[ManagedProcess, str]]:
    """The session gateway's process and URL, just started: use `gateway_url`. Started as
    early as the predictor, for the same reason (see `predictor_launch`)."""
    process, url = start_gateway(
        logs_dir,
        predictor_launch[1],
        redis_url,
        mlflow_server,
        api_token,
        name="gateway",
        wait=False,
        GATEWAY_WORKERS="2",
    )
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def gateway_url(gateway_launch: tuple[ManagedProcess, str], predictor_url: str) -> str:
    """A gateway in front of the session predictor (ready, serving `trained_registry`), Redis
    and MLflow (start `trainer_worker` too for jobs to run)."""
    process, url = gateway_launch
    wait_healthy(process, url)
    return url
