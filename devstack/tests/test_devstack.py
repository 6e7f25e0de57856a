"""iris_devstack against real processes: a process group stopped whole, a throwaway Redis,
supervisord's commands, and the stack's commands on a state folder where nothing runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from iris_devstack.processes import (
    REPO_ROOT,
    ManagedProcess,
    StartupError,
    child_env,
    child_pids,
    free_port,
    wait_until,
)
from iris_devstack.redis import redis_answers, redis_server, redis_server_binary
from iris_devstack.servers import serve_in_thread
from iris_devstack.supervisor import supervisord_command

pytestmark = pytest.mark.integration

# A parent that starts a child in its own process group and prints the child's pid.
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting to be reaped) is not alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pid(process: ManagedProcess) -> int:
    wait_until(lambda: process.log_path.read_text().strip().isdigit(), 15, "the child's pid")
    return int(process.log_path.read_text())


@pytest.mark.parametrize("stop", [ManagedProcess.stop, ManagedProcess.kill])
def test_stopping_a_process_stops_its_children(
    tmp_path: Path, stop: Callable[[ManagedProcess], None]
) -> None:
    process = ManagedProcess("parent", [sys.executable, "-c", PARENT], tmp_path)
    child = child_pid(process)
    assert alive(process.pid)
    assert alive(child)

    stop(process)

    assert process.popen.poll() is not None
    wait_until(lambda: not alive(child), 5, "the child gone")


def test_a_process_that_exits_before_it_is_ready_fails_the_wait_with_its_log(
    tmp_path: Path,
) -> None:
    command = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    process = ManagedProcess("broken", command, tmp_path)

    with pytest.raises(StartupError, match=r"exited with code 3[\s\S]*no model here"):
        wait_until(lambda: False, 15, "broken server", process)


def test_wait_until_gives_up_after_its_timeout_and_takes_errors_as_not_yet() -> None:
    def failing() -> bool:
        raise ConnectionRefusedError

    with pytest.raises(TimeoutError, match=r"never not ready after 0\.2s"):
        wait_until(failing, 0.2, "never")
    assert wait_until(lambda: True, 1) < 1


def test_a_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_child_env_puts_the_venv_first_and_drops_the_tracking_uri(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    env = child_env(EXTRA="1")
    assert "MLFLOW_TRACKING_URI" not in env
    assert env["PATH"].startswith(str(Path(sys.executable).parent))
    assert env["EXTRA"] == "1"
    assert child_env(MLFLOW_TRACKING_URI="x")["MLFLOW_TRACKING_URI"] == "x"


def test_a_throwaway_redis_answers_and_is_gone_after(tmp_path: Path) -> None:
    binary = redis_server_binary()
    assert binary is not None
    assert os.access(binary, os.X_OK)

    with redis_server(tmp_path) as url:
        assert redis_answers(url)

    assert not redis_answers(url)


def test_without_redis_server_on_path_valkeylites_valkey_server_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    binary = redis_server_binary()
    assert binary is not None
    assert Path(binary).name == "valkey-server"

    with redis_server(tmp_path) as url:
        assert redis_answers(url)


def test_a_supervisord_command_gets_its_environment_filled() -> None:
    command = supervisord_command("flower", STACK_VENV="/venv", STACK_FLOWER_PORT="5599")
    assert command[:2] == ["/venv/bin/celery", "-A"]
    assert "--port=5599" in command
    assert not any("%(" in part for part in command)


def test_an_asgi_app_is_served_in_a_thread() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"up"})

    with serve_in_thread(app) as url:
        assert httpx.get(url).text == "up"


@pytest.mark.parametrize(
    ("command", "said"), [("status", "not running (make up)"), ("down", "nothing to stop")]
)
def test_the_stack_on_a_state_folder_where_nothing_runs(
    tmp_path: Path, command: str, said: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iris_devstack", command],
        env=child_env(STACK_STATE_DIR=str(tmp_path / "state")),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"[stack] {said}\n"
    assert not (tmp_path / "state").exists()


def test_child_pids_are_the_live_children_of_every_thread() -> None:
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(target=lambda: started.append(subprocess.Popen(["sleep", "30"])))
    thread.start()
    thread.join()
    started.append(subprocess.Popen(["sleep", "30"]))
    try:
        assert {process.pid for process in started} <= child_pids(os.getpid())
        started[1].kill()
        started[1].wait()
        assert started[1].pid not in child_pids(os.getpid())
        assert started[0].pid in child_pids(os.getpid())
    finally:
        for process in started:
            process.kill()
            process.wait()
