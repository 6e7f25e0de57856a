"""Fixtures that start the worker as a real process (see tests/support/processes.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, VENV_BIN, ManagedProcess, wait_until

# Well above the longest test job on a busy 2-core machine, so a healthy worker's job is never
# handed out twice; the test that kills a worker sets a shorter one on its own broker.
TEST_VISIBILITY_TIMEOUT_S = 300
_names = itertools.count(1)


def worker_env(redis_url: str, tracking_uri: str, **env: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TRAINER_REPO_ROOT": str(REPO_ROOT),
        "TRAINER_VISIBILITY_TIMEOUT_S": str(TEST_VISIBILITY_TIMEOUT_S),
        "TRAINER_UNACKED_RESTORE_INTERVAL_S": "1",
        "TRAINER_UNACKED_RESTORE_THROTTLE_S": "1",
        **env,
    }


def _ready(process: ManagedProcess, log_offset: int) -> bool:
    # Celery logs "<name> ready." once it consumes from its queues.
    with process.log_path.open("rb") as log:
        log.seek(log_offset)
        return b" ready." in log.read()


def start_worker(
    log_dir: Path, redis_url: str, tracking_uri: str, *, name: str | None = None, **env: str
) -> ManagedProcess:
    """Start `celery -A iris_trainer.celery_app worker -Q training` and wait until it is ready."""
    name = name or f"trainer-worker-{next(_names)}"
    log_path = log_dir / f"{name}.log"
    # The log is appended to: only a "ready" written by this process counts.
    log_offset = log_path.stat().st_size if log_path.exists() else 0
    process = ManagedProcess(
        name,
        [
            str(VENV_BIN / "celery"),
            "-A",
            "iris_trainer.celery_app",
            "worker",
            "-Q",
            "training",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}@%h",
            # Alone on its broker: skip waiting for other workers' hellos.
            "--without-mingle",
            "--without-gossip",
        ],
        log_dir,
        env=worker_env(redis_url, tracking_uri, **env),
        cwd=REPO_ROOT,
    )
    wait_until(lambda: _ready(process, log_offset), 60, f"celery worker {name}", process)
    return process


@pytest.fixture(scope="session")
def trainer_worker(
    logs_dir: Path, redis_url: str, trained_registry: str
) -> Iterator[ManagedProcess]:
    """A worker consuming the session Redis, training against `trained_registry`."""
    process = start_worker(logs_dir, redis_url, trained_registry, name="trainer-worker")
    yield process
    process.stop()
