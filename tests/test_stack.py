"""`make up` / `make down` on a clone: the whole stack as plain processes, started once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from tests.support.core import cli_env
from tests.support.processes import REPO_ROOT, free_port, http_ok, tcp_open, wait_until

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
        # Settings a user may pick too: two server processes per service, as on a two-core
        # machine (a killed master must take its workers with it), and an idle worker that
        # stops at once (its soft shutdown, kept for a running job, would wait the whole
        # timeout on `down`). Later lines win.
        + "PREDICTOR_WORKERS=2\n"
        + "GATEWAY_WORKERS=2\n"
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
    for program in ("mlflow", "trainer", "predictor:predictor-0", "gateway"):
        assert f"{program} " in status
    assert "STOPPED" in status.split("redis", 1)[1].splitlines()[0], "a Redis was already there"


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields from the state on (the name before them may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting to be reaped) is not alive."""
    try:
        return proc_stat(pid)[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def live_pids() -> Iterator[int]:
    for entry in Path("/proc").glob("[0-9]*"):
        if alive(int(entry.name)):
            yield int(entry.name)


def children(pid: int) -> set[int]:
    found = set()
    for child in live_pids():
        with suppress(FileNotFoundError, ProcessLookupError):
            if int(proc_stat(child)[1]) == pid:
                found.add(child)
    return found


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
    old = children(master)
    assert len(old) >= 2, "not a multi-process server"
    log = clone / ".state" / "logs" / f"{program.rsplit(':', 1)[-1]}.log"
    seen = len(log.read_bytes())

    os.kill(master, signal.SIGKILL)

    wait_until(lambda: not any(alive(pid) for pid in old), 5, "the old master's workers gone")
    wait_until(tcp_open(ports[service]), 10, f"a new {service} master listening")
    wait_until(http_ok(f"http://127.0.0.1:{ports[service]}/readyz"), 60, f"a new {service}")

    def replaced() -> bool:
        running = pids(stack(clone, "status").stdout).get(program)
        return running is not None and int(running) != master

    wait_until(replaced, 30, f"supervisord's {program} running again")
    new = int(pids(stack(clone, "status").stdout)[program])
    assert len(children(new)) >= 2
    restarts = log.read_bytes()[seen:].decode(errors="replace")
    assert "address already in use" not in restarts.lower(), restarts


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
    # Nothing `up` started is left behind, not even the workers of a master killed earlier.
    with suppress(TimeoutError):
        wait_until(lambda: not stack_processes(clone), 5, "the stack's processes gone")
    assert stack_processes(clone) == {}
