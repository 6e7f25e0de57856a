"""Session fixtures every integration test builds on: Redis, an MLflow server, trained models."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from iris_devstack.processes import (
    REPO_ROOT,
    VENV_BIN,
    ManagedProcess,
    child_env,
    free_port,
    http_ok,
    wait_until,
)
from iris_devstack.redis import start_redis

if TYPE_CHECKING:
    from iris_shared.jobs import JobProgress, TrainingResult

# The jobs namespace of this session's workers and gateways: unique, as `make up` makes it.
JOBS_NAMESPACE = f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("process-logs")


@pytest.fixture(scope="session")
def redis_process(logs_dir: Path) -> Iterator[tuple[ManagedProcess, str]]:
    process, url = start_redis(logs_dir)
    yield process, url
    process.stop()


@pytest.fixture(scope="session")
def redis_url(redis_process: tuple[ManagedProcess, str]) -> str:
    return redis_process[1]


def start_mlflow(
    log_dir: Path,
    store_dir: Path,
    env: dict[str, str] | None = None,
    *,
    options: Sequence[str] = (),
    name: str = "mlflow",
    port: int | None = None,
) -> tuple[ManagedProcess, str]:
    """`mlflow server OPTIONS` on a free port, SQLite and artifact stores in `store_dir`."""
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(
        name,
        [
            str(VENV_BIN / "mlflow"),
            "server",
            *options,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(store_dir / "artifacts"),
            "--serve-artifacts",
        ],
        log_dir,
        # The server's background job runners (GenAI features) are unused here and cost
        # several processes per server on a 2-core machine.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
    )
    uri = f"http://127.0.0.1:{port}"
    wait_until(http_ok(f"{uri}/health"), 90, f"{name} server", process)
    return process, uri


@pytest.fixture(scope="session")
def mlflow_server(logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's MLflow server, with webhooks on for a local receiver (the predictor's)."""
    from cryptography.fernet import Fernet

    process, uri = start_mlflow(
        logs_dir,
        tmp_path_factory.mktemp("mlflow-store"),
        env={
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            # The server caches the webhook list, 60 s by default: a test's new webhook must
            # count at once.
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        },
    )
    yield uri
    process.stop()


@pytest.fixture(scope="session")
def data_ready() -> Path:
    """The repository's data/iris.csv, bootstrapped from its DVC pointer if missing."""
    data = REPO_ROOT / "data" / "iris.csv"
    if not data.exists():
        run_cli("data", "bootstrap")
    return data


def cli_env(tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
    env = child_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update(extra)
    return env


def run_cli(
    *args: str,
    tracking_uri: str | None = None,
    cwd: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(VENV_BIN / "iris-mlops"), *args],
        cwd=cwd or REPO_ROOT,
        env={**cli_env(tracking_uri), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"iris-mlops {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def train_in_process(
    tracking_uri: str,
    *,
    repo_root: Path = REPO_ROOT,
    overrides: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
) -> TrainingResult:
    """Train, register and gate in this process, as the CLI and the worker do in theirs.

    Settings are given in full and `.env` is ignored, so a developer's local configuration
    cannot change what a test trains.
    """
    # Imported here: MLflow and scikit-learn are slow to import, and unit-only runs skip this.
    from iris_trainer.config import TrainerSettings
    from iris_trainer.pipeline.run import train_from_settings

    settings = TrainerSettings(
        _env_file=None,
        repo_root=repo_root,
        mlflow_tracking_uri=tracking_uri,
    )
    return train_from_settings(
        settings,
        overrides=overrides,
        job_id=job_id,
        on_progress=on_progress,
    )


@pytest.fixture(scope="session")
def trained_registry(mlflow_server: str, data_ready: Path) -> str:
    """An MLflow server whose registry holds version 1 of both models, each with `production`."""
    train_in_process(mlflow_server)
    return mlflow_server


def register_copies(
    tracking_uri: str, name: str, copies: int, source_name: str = "Iris-LogisticRegression"
) -> list[str]:
    """New versions of model `name` (registered if new), each a copy of `source_name`'s
    servable version 1 from `trained_registry`: versions to serve or promote, no training."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    source = client.get_model_version(source_name, "1")
    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)
    return [
        str(
            client.create_model_version(
                name,
                source.source,
                run_id=source.run_id,
                # The REST API wants the logged model's id, which the version does not echo.
                model_id=source.model_id or source.source.removeprefix("models:/"),
            ).version
        )
        for _ in range(copies)
    ]
