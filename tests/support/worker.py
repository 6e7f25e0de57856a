"""Fixtures that start the worker as a real process (see iris_devstack.processes)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from iris_devstack.processes import (
    REPO_ROOT,
    VENV_BIN,
    ManagedProcess,
    free_port,
    http_ok,
    wait_until,
)
from iris_devstack.supervisor import supervisord_command
from tests.support.core import JOBS_NAMESPACE

_names = itertools.count(1)


def worker_env(redis_url: str, tracking_uri: str, **env: str) -> dict[str, str]:
    # The reliability settings keep their defaults (a heartbeat keeps a long job's delivery
    # fresh); the tests that kill or stop a worker shorten them on a broker of their own.
    return {
        "REDIS_URL": redis_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "JOBS_NAMESPACE": JOBS_NAMESPACE,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TRAINER_REPO_ROOT": str(REPO_ROOT),
        # As supervisord and the image run it: SIGTERM starts Celery's soft shutdown.
        "REMAP_SIGTERM": "SIGQUIT",
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
    """Start `celery -A iris_trainer.celery_app worker` and wait until it is ready."""
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
            # No start-up banner: the worker writes JSON lines only (as supervisord runs it).
            "--quiet",
            "worker",
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
    # Killed, not stopped: with soft shutdown on idle, a stop sleeps the whole soft-shutdown
    # timeout even with nothing to hand back, and at the end of the session nothing is left
    # to hand back. The tests about stopping a worker start workers of their own.
    process.kill()


class RunningFlower(NamedTuple):
    url: str
    pid: int


@pytest.fixture(scope="session")
def flower(logs_dir: Path, redis_url: str) -> Iterator[RunningFlower]:
    """Flower as supervisord runs it (its exact command line), reading the task events of
    this session's workers. Only events sent once it runs count."""
    port = free_port()
    process = ManagedProcess(
        "flower",
        supervisord_command("flower", STACK_VENV=str(VENV_BIN.parent), STACK_FLOWER_PORT=str(port)),
        logs_dir,
        env={"REDIS_URL": redis_url, "JOBS_NAMESPACE": JOBS_NAMESPACE},
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(http_ok(f"{url}/healthcheck"), 60, "flower", process)
        yield RunningFlower(url, process.pid)
    finally:
        process.stop()
