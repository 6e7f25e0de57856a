"""`make up` / `make down` on a clone: the whole stack as plain processes, started once."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from tests.support.core import cli_env
from tests.support.processes import REPO_ROOT, free_port, tcp_open

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def stack(clone: Path, command: str) -> subprocess.CompletedProcess[str]:
    # The repository's venv runs the clone's stack.py: the clone gets its own .env and .state.
    return subprocess.run(
        [sys.executable, str(clone / "scripts" / "stack.py"), command],
        cwd=clone,
        env={**cli_env(), "API_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    names = ("mlflow", "predictor", "gateway", "prometheus", "flower", "alertmanager")
    return {name: free_port() for name in (*names, "redis_exporter")}


@pytest.fixture(scope="module")
def clone(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, ports: dict[str, int]
) -> Iterator[Path]:
    clone = tmp_path_factory.mktemp("stack") / "iris-mlops"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (clone / ".env").write_text(
        (REPO_ROOT / ".env.example").read_text()
        + f"\nREDIS_URL={redis_url}\n"
        + f"STACK_MLFLOW_PORT={ports['mlflow']}\n"
        + f"STACK_PREDICTOR_PORT={ports['predictor']}\n"
        + f"STACK_GATEWAY_PORT={ports['gateway']}\n"
        + f"STACK_PROMETHEUS_PORT={ports['prometheus']}\n"
        + f"STACK_FLOWER_PORT={ports['flower']}\n"
        + f"STACK_ALERTMANAGER_PORT={ports['alertmanager']}\n"
        + f"STACK_REDIS_EXPORTER_PORT={ports['redis_exporter']}\n"
        # Settings a user may pick too, cheaper for a test that is not about them: one server
        # process per service, and an idle worker that stops at once (its soft shutdown, kept
        # for a running job, would wait the whole timeout on `down`). Later lines win.
        + "PREDICTOR_WORKERS=1\n"
        + "GATEWAY_WORKERS=1\n"
        + "TRAINER_SOFT_SHUTDOWN_TIMEOUT_S=1\n"
    )
    up = stack(clone, "up")
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        yield clone
    finally:
        stack(clone, "down")


def test_up_serves_the_seed_curl_and_writes_a_token(clone: Path, ports: dict[str, int]) -> None:
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    answer = httpx.post(f"{gateway}/predict", json=SETOSA, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["predicted_species"] == "Iris-setosa"
    assert answer.json()["model_version"] == "1"
    token = dotenv_values(clone / ".env")["API_TOKEN"]
    assert token
    # Secrets inside: readable by its owner only, though .env.example was copied at 644.
    assert (clone / ".env").stat().st_mode & 0o777 == 0o600
    assert len(token) >= 32
    assert (clone / ".env").read_text().count("API_TOKEN=") == 1
    denied = httpx.post(f"{gateway}/retrain", timeout=10)
    assert denied.status_code == 401
    accepted = httpx.post(
        f"{gateway}/retrain", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert accepted.status_code == 202


def pids(status: str) -> dict[str, str]:
    """Each running program's pid, from supervisorctl's status lines."""
    found = re.findall(r"^(\w+)\s+RUNNING\s+pid (\d+)", status, flags=re.MULTILINE)
    return dict(found)


def test_up_again_changes_nothing(clone: Path, ports: dict[str, int]) -> None:
    before = pids(stack(clone, "status").stdout)
    again = stack(clone, "up")
    assert again.returncode == 0, again.stderr
    assert "training the baseline" not in again.stdout
    status = stack(clone, "status").stdout
    assert before, status
    assert pids(status) == before, "a program was restarted"
    for program in ("mlflow", "trainer", "predictor", "gateway"):
        assert f"{program} " in status
    assert "STOPPED" in status.split("redis", 1)[1].splitlines()[0], "a Redis was already there"


def test_down_frees_the_ports_and_leaves_the_reused_redis(
    clone: Path, ports: dict[str, int], redis_url: str
) -> None:
    result = stack(clone, "down")
    assert result.returncode == 0, result.stderr
    for name in ("mlflow", "predictor", "gateway", "prometheus"):
        with pytest.raises(ConnectionRefusedError):
            tcp_open(ports[name])()
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert tcp_open(redis_port)()
