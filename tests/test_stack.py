"""`make up` / `make down` on a clone: the whole stack as plain processes, started once."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
import redis
from dotenv import dotenv_values

from iris_devstack.processes import (
    REPO_ROOT,
    VENV_BIN,
    alive,
    child_pids,
    free_port,
    http_ok,
    tcp_open,
    wait_until,
)
from tests.support.core import cli_env

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def stack(clone: Path, command: str) -> subprocess.CompletedProcess[str]:
    # The repository's venv runs the clone's stack: the clone gets its own .env and .state.
    return subprocess.run(
        [sys.executable, "-m", "iris_devstack", command, "--root", str(clone)],
        cwd=clone,
        env={**cli_env(), "API_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=900,
    )


PREDICTORS = 2


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (make up's predictor replicas use these)."""
    while True:
        first = free_port()
        if all(_port_free(first + offset) for offset in range(1, count)):
            return first


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    names = ("mlflow", "gateway", "prometheus", "flower", "alertmanager", "redis")
    return {
        "predictor": free_ports(PREDICTORS),
        **{name: free_port() for name in (*names, "redis_exporter")},
    }


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[Path]:
    clone = tmp_path_factory.mktemp("stack") / "iris-mlops"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (clone / ".env").write_text(
        (REPO_ROOT / ".env.example").read_text()
        + f"\nSTACK_REDIS_PORT={ports['redis']}\n"
        + f"STACK_MLFLOW_PORT={ports['mlflow']}\n"
        + f"STACK_PREDICTOR_PORT={ports['predictor']}\n"
        + f"STACK_PREDICTORS={PREDICTORS}\n"
        + f"STACK_GATEWAY_PORT={ports['gateway']}\n"
        + f"STACK_PROMETHEUS_PORT={ports['prometheus']}\n"
        + f"STACK_FLOWER_PORT={ports['flower']}\n"
        + f"STACK_ALERTMANAGER_PORT={ports['alertmanager']}\n"
        + f"STACK_REDIS_EXPORTER_PORT={ports['redis_exporter']}\n"
        # Settings a user may pick too: two server processes per service, as on a two-core
        # machine (a killed master must take its workers with it), and an idle worker that
        # stops at once (its soft shutdown, kept for a running job, would wait the whole
        # timeout on `down`). Later lines win.
        + "PREDICTOR_WORKERS=2\n"
        + "GATEWAY_WORKERS=2\n"
        + "TRAINER_SOFT_SHUTDOWN_TIMEOUT_S=1\n"
        # Where earlier versions of `make compose-up` kept the admin password of compose's
        # MLflow: make up's bootstrap read it, and refused an MLflow without logins.
        + "MLFLOW_ADMIN_PASSWORD=from-an-earlier-compose-up\n"
    )
    # The same checkout runs the stack in containers too: compose's secrets go to .env first.
    compose_secrets = subprocess.run(
        [sys.executable, "scripts/compose_stack.py", "secrets"],
        cwd=clone,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compose_secrets.returncode == 0, compose_secrets.stderr
    written = dotenv_values(clone / ".env")
    assert "MLFLOW_ADMIN_PASSWORD" not in written
    assert written["COMPOSE_MLFLOW_ADMIN_PASSWORD"] == "from-an-earlier-compose-up"
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
    found = re.findall(r"^([\w:-]+)\s+RUNNING\s+pid (\d+)", status, flags=re.MULTILINE)
    return dict(found)


def test_up_again_changes_nothing(clone: Path, ports: dict[str, int]) -> None:
    before = pids(stack(clone, "status").stdout)
    again = stack(clone, "up")
    assert again.returncode == 0, again.stderr
    assert "training the baseline" not in again.stdout
    status = stack(clone, "status").stdout
    assert before, status
    assert pids(status) == before, "a program was restarted"
    for program in ("mlflow", "trainer", "predictor:predictor-0", "predictor:predictor-1"):
        assert f"{program} " in status
    assert "redis" in before


def test_up_runs_its_own_redis_with_a_password_a_memory_cap_and_no_eviction(
    clone: Path, ports: dict[str, int]
) -> None:
    settings = dotenv_values(clone / ".env")
    password = settings["REDIS_PASSWORD"]
    assert password
    assert len(password) >= 32
    assert settings["REDIS_URL"] == f"redis://127.0.0.1:{ports['redis']}/0"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=ports["redis"]).ping()
    with redis.Redis(port=ports["redis"], password=password, decode_responses=True) as client:
        config = client.config_get("maxmemory") | client.config_get("maxmemory-policy")
        config |= client.config_get("appendonly")
    assert int(config["maxmemory"]) == 512 * 1024 * 1024
    assert config["maxmemory-policy"] == "noeviction"
    assert config["appendonly"] == "yes"
    # The password is in a file of the stack's, on no command line any user can read.
    assert not any(password in command for command in stack_processes(clone).values())


def test_a_killed_predictor_replica_costs_no_request_through_the_gateway(
    clone: Path, ports: dict[str, int]
) -> None:
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    outcomes[str(client.post(f"{gateway}/predict", json=SETOSA).status_code)] += 1
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(1.5)
    # Both replicas answer: the gateway spreads predictions over them.
    served = [
        httpx.get(f"http://127.0.0.1:{ports['predictor'] + n}/metrics", timeout=10).text
        for n in range(PREDICTORS)
    ]
    victim = int(pids(stack(clone, "status").stdout)["predictor:predictor-1"])
    os.kill(victim, signal.SIGKILL)
    time.sleep(3)
    stop.set()
    for client in clients:
        client.join()

    assert set(outcomes) == {"200"}, outcomes
    assert outcomes["200"] > 50
    assert all("iris_predictions_total{" in text for text in served)
    wait_until(http_ok(f"http://127.0.0.1:{ports['predictor'] + 1}/readyz"), 60, "replica back")


def test_the_cli_finds_the_running_stacks_log_redis_and_namespace(clone: Path) -> None:
    """After `make up`, the commands of the README need no flags."""
    env = {
        k: v
        for k, v in cli_env().items()
        if not k.startswith(("REDIS_", "JOBS_", "PREDICTOR_", "MLFLOW_TRACKING"))
    }
    batch = {"instances": [SETOSA] * 120}
    gateway = dotenv_values(clone / ".env")["STACK_GATEWAY_PORT"]
    answer = httpx.post(f"http://127.0.0.1:{gateway}/predict/batch", json=batch, timeout=10)
    assert answer.status_code == 200

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "iris-mlops"), *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def reported() -> bool:
        return run("report", "drift").returncode == 0

    # The predictor writes its log a moment after answering.
    wait_until(reported, 30, "iris-mlops report drift")
    pending = run("data", "add-feedback", "--dry-run")

    assert (clone / "reports" / "drift.html").exists()
    assert pending.returncode == 0, pending.stderr
    assert "No labelled rows are waiting" in pending.stdout


def live_pids() -> Iterator[int]:
    for entry in Path("/proc").glob("[0-9]*"):
        if alive(int(entry.name)):
            yield int(entry.name)


def stack_processes(clone: Path) -> dict[int, str]:
    """The live processes of the clone's stack, each with its command line: whatever carries
    the clone's path in its command line, working folder or environment (supervisord hands
    STACK_ROOT to every program, and each program to its own children)."""
    root = str(clone.resolve())
    found = {}
    for pid in live_pids():
        if pid == os.getpid():
            continue
        with suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            proc = Path(f"/proc/{pid}")
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if (
                root in command
                or os.readlink(proc / "cwd").startswith(root)
                or f"STACK_ROOT={root}".encode() in (proc / "environ").read_bytes().split(b"\0")
            ):
                found[pid] = command
    return found


@pytest.mark.parametrize(
    ("service", "program"), [("predictor", "predictor:predictor-0"), ("gateway", "gateway")]
)
def test_a_killed_server_master_is_replaced_and_its_workers_stop(
    clone: Path, ports: dict[str, int], service: str, program: str
) -> None:
    """The OOM killer or a crash SIGKILLs a multi-process server's master: its workers stop
    within seconds and free the port, and supervisord's next master serves on it."""
    master = int(pids(stack(clone, "status").stdout)[program])
    old = child_pids(master)
    assert len(old) >= 2, "not a multi-process server"
    log = clone / ".state" / "logs" / f"{program.rsplit(':', 1)[-1]}.log"
    seen = len(log.read_bytes())

    os.kill(master, signal.SIGKILL)

    wait_until(lambda: not any(alive(pid) for pid in old), 5, "the old master's workers gone")
    # How soon depends on supervisord's back-off and on importing the service on a busy
    # machine (over 10 s during the full suite); what must hold is that it serves on that port.
    wait_until(tcp_open(ports[service]), 120, f"a new {service} master listening")
    wait_until(http_ok(f"http://127.0.0.1:{ports[service]}/readyz"), 60, f"a new {service}")

    def replaced() -> bool:
        running = pids(stack(clone, "status").stdout).get(program)
        return running is not None and int(running) != master

    wait_until(replaced, 30, f"supervisord's {program} running again")
    new = int(pids(stack(clone, "status").stdout)[program])
    assert len(child_pids(new)) >= 2
    restarts = log.read_bytes()[seen:].decode(errors="replace")
    assert "address already in use" not in restarts.lower(), restarts


def test_down_frees_the_ports_and_leaves_nothing_behind(clone: Path, ports: dict[str, int]) -> None:
    log = clone / ".state" / "logs" / "supervisord.log"
    seen = log.stat().st_size
    result = stack(clone, "down")
    assert result.returncode == 0, result.stderr
    # Each program stopped on its own, Redis and MLflow after everything that talks to them.
    stopping = log.read_bytes()[seen:].decode(errors="replace")
    assert "SIGKILL" not in stopping, stopping
    stopped = re.findall(r"stopped: ([\w-]+)", stopping)
    assert stopped[-2:] == ["mlflow", "redis"], stopping
    for name in ("mlflow", "predictor", "gateway", "prometheus", "redis"):
        with pytest.raises(ConnectionRefusedError):
            tcp_open(ports[name])()
    # Nothing `up` started is left behind, not even the workers of a master killed earlier.
    with suppress(TimeoutError):
        wait_until(lambda: not stack_processes(clone), 5, "the stack's processes gone")
    assert stack_processes(clone) == {}
