"""Fixtures that start the predictor as a real process (see iris_devstack.processes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iris_devstack.processes import VENV_BIN, ManagedProcess, free_port, http_ok, wait_until
from tests.support.core import JOBS_NAMESPACE


@dataclass(frozen=True)
class PredictorService:
    process: ManagedProcess
    url: str
    cache_dir: Path
    prediction_log_dir: Path


def start_predictor(
    log_dir: Path, tracking_uri: str, *, wait: bool = True, **env: str
) -> tuple[ManagedProcess, str]:
    """Start `python -m iris_predictor` on a free port, as `make up` and the images do.

    Waits until the process answers /healthz (not /readyz: a predictor may rightly have no model
    yet), unless `wait` is false: then call `wait_healthy`. Defaults: one worker process, poll
    every second, cache and prediction log in folders of their own under `log_dir`; any
    `PREDICTOR_*` (or other) variable given in `env` wins.
    """
    port = free_port()
    name = f"predictor-{port}"
    state = log_dir / name
    process = ManagedProcess(
        name,
        [str(VENV_BIN / "python"), "-m", "iris_predictor"],
        log_dir,
        env={
            "PREDICTOR_HOST": "127.0.0.1",
            "PREDICTOR_PORT": str(port),
            "PREDICTOR_WORKERS": "1",
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PREDICTOR_POLL_INTERVAL_S": "1",
            "PREDICTOR_CACHE_DIR": str(state / "cache"),
            "PREDICTOR_PREDICTION_LOG_DIR": str(state / "prediction-logs"),
            **env,
        },
    )
    url = f"http://127.0.0.1:{port}"
    if wait:
        wait_healthy(process, url)
    return process, url


def wait_healthy(process: ManagedProcess, url: str) -> None:
    """Wait until the process answers /healthz; stop it if it never does."""
    try:
        wait_until(http_ok(f"{url}/healthz"), 120, "predictor /healthz", process)
    except Exception:
        process.stop()
        raise


def wait_ready(process: ManagedProcess, url: str, timeout: float = 120) -> None:
    wait_until(http_ok(f"{url}/readyz"), timeout, "predictor /readyz", process)


@pytest.fixture(scope="session")
def predictor_launch(
    mlflow_server: str, logs_dir: Path, redis_url: str
) -> Iterator[tuple[ManagedProcess, str]]:
    """The session predictor's process and URL, just started: use `predictor_service`.

    Started before the registry is trained, so that its imports (seconds of CPU) overlap the
    training and the other services' start-up; it polls every second and loads v1 once
    `trained_registry` has it.
    """
    process, url = start_predictor(
        logs_dir,
        mlflow_server,
        wait=False,
        PREDICTOR_WORKERS="2",
        REDIS_URL=redis_url,
        JOBS_NAMESPACE=JOBS_NAMESPACE,
        PREDICTOR_DRIFT_INTERVAL_S="1",
    )
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def predictor_service(
    predictor_launch: tuple[ManagedProcess, str], trained_registry: str
) -> PredictorService:
    """The predictor serving `trained_registry`'s Iris-LogisticRegression@production (v1),
    with two worker processes as on a two-core machine (metrics merged across them), keeping
    its answers in the session Redis for feedback, and scoring drift every second."""
    process, url = predictor_launch
    wait_healthy(process, url)
    wait_ready(process, url)
    env = process.env or {}
    return PredictorService(
        process=process,
        url=url,
        cache_dir=Path(env["PREDICTOR_CACHE_DIR"]),
        prediction_log_dir=Path(env["PREDICTOR_PREDICTION_LOG_DIR"]),
    )


@pytest.fixture(scope="session")
def predictor_url(predictor_service: PredictorService) -> str:
    """Base URL (`http://127.0.0.1:PORT`) of a ready predictor on `trained_registry`."""
    return predictor_service.url
