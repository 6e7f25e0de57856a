"""Start real processes on free ports for tests, and stop them (and their children) after."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from iris_shared.testing import free_port, redis_server_args

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SUPERVISORD_CONF = REPO_ROOT / "infra/local/supervisord.conf"
# mlflow.set_tracking_uri, which tests and training in this process call, also writes
# MLFLOW_TRACKING_URI into os.environ; inherited, it would point a later child (`make up`
# in test_stack, say) at whichever server was set last, perhaps one stopped since.
NEVER_INHERITED = frozenset({"MLFLOW_TRACKING_URI"})


def child_env(**env: str) -> dict[str, str]:
    """The environment of a process a test starts: this one's, the venv first on PATH, no
    tracking URI unless `env` gives one, then `env`."""
    inherited = {k: v for k, v in os.environ.items() if k not in NEVER_INHERITED}
    return {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}


def supervisord_command(program: str, **env: str) -> list[str]:
    """The command supervisord runs for `program`, with its %(ENV_X)s filled from `env`."""
    parser = configparser.RawConfigParser()
    parser.read(SUPERVISORD_CONF)
    command = parser[f"program:{program}"]["command"]
    return shlex.split(re.sub(r"%\(ENV_(\w+)\)s", lambda m: env[m.group(1)], command))


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, process: ManagedProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{what}: process exited early\n{process.tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    tail = process.tail() if process is not None else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail}")


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=1.0).status_code == 200


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    return check


class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self.env = env
        self.cwd = cwd
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        return subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(**(self.env or {})),
            cwd=self.cwd or REPO_ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return f"--- {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    def restart(self) -> None:
        self.stop()
        self.popen = self._spawn()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15, *, whole_group: bool = True) -> None:
        """SIGTERM the process group, or only its leader as supervisord and compose do for the
        worker, then SIGKILL the group if it has not exited within `timeout`."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if whole_group:
                os.killpg(self.popen.pid, signal.SIGTERM)
            else:
                self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def start_redis(
    log_dir: Path, port: int | None = None, *, durable: bool = False
) -> tuple[ManagedProcess, str]:
    """A Redis on a free port; `durable` persists as `make up`'s does (AOF, fsync each second),
    so that `restart()` keeps what it held."""
    port = port or free_port()
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(
        f"redis-{port}", redis_server_args(port, data_dir, durable=durable), log_dir
    )
    wait_until(tcp_open(port), 15, "redis", process)
    return process, f"redis://127.0.0.1:{port}/0"


def start_mlflow(
    log_dir: Path, store_dir: Path, env: dict[str, str] | None = None
) -> tuple[ManagedProcess, str]:
    port = free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    process = ManagedProcess(
        "mlflow",
        [
            str(VENV_BIN / "mlflow"),
            "server",
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
    wait_until(http_ok(f"{uri}/health"), 90, "mlflow server", process)
    return process, uri
