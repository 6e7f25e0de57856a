"""Processes started on this machine, each in its own process group so that stopping one stops
its workers too, and the waits that tell when they are ready.

One implementation for the tests, the benchmark and the local stack: a process that exits
before it is ready fails the wait at once, with the end of its log.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# mlflow.set_tracking_uri, which tests and training in this process call, also writes
# MLFLOW_TRACKING_URI into os.environ; inherited, it would point a later child (`make up`
# in test_stack, say) at whichever server was set last, perhaps one stopped since.
NEVER_INHERITED = frozenset({"MLFLOW_TRACKING_URI"})


class StartupError(RuntimeError):
    """A process exited before it was ready."""


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields from the state on (the name before them may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting to be reaped) is not alive."""
    try:
        return proc_stat(pid)[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def child_pids(pid: int) -> set[int]:
    """The live processes whose parent is `pid`, whichever of its threads started them.

    Read from each process's parent id: `/proc/<pid>/task/<tid>/children` lists the children
    of one thread only, and its kernel documentation calls it unreliable.
    """
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            state, parent = proc_stat(int(entry.name))[:2]
            if int(parent) == pid and state != "Z":
                found.add(int(entry.name))
    return found


def child_env(**env: str) -> dict[str, str]:
    """The environment of a child process: this one's, the venv first on PATH, no tracking URI
    unless `env` gives one, then `env`."""
    inherited = {k: v for k, v in os.environ.items() if k not in NEVER_INHERITED}
    return {**inherited, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of `log` under its name, or nothing when there is no log."""
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return f"--- {log} ---\n" + "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ManagedProcess:
    """A child process in its own process group, logging to `log_dir/<name>.log`.

    `env` is added to `child_env()`; with `inherit=False` it is the whole environment.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        *,
        inherit: bool = True,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self.env = child_env(**(env or {})) if inherit else dict(env or {})
        self.cwd = cwd or REPO_ROOT
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def restart(self) -> None:
        self.stop()
        self.popen = self._spawn()

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20, *, whole_group: bool = True) -> None:
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


def start_process(
    name: str, command: list[str], env: dict[str, str], logs: Path, cwd: Path | None = None
) -> ManagedProcess:
    """`command` with exactly the environment `env`, logging to `logs/<name>.log`."""
    return ManagedProcess(name, command, logs, env, cwd, inherit=False)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str = "condition",
    process: ManagedProcess | None = None,
    *,
    interval: float = 0.05,
) -> float:
    """Call `check` until it is true, an error in it counting as false; return the seconds it
    took. Raise TimeoutError after `timeout`, StartupError as soon as `process` exits."""
    started = time.monotonic()
    while True:
        if process is not None and process.popen.poll() is not None:
            raise StartupError(
                f"{what}: {process.name} exited with code {process.popen.returncode}\n"
                f"{process.tail()}"
            )
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            tail = process.tail() if process is not None else ""
            raise TimeoutError(f"{what} not ready after {timeout:g}s\n{tail}")
        time.sleep(interval)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """TLS settings for short-lived httpx clients (pass it as `verify=`): each `httpx.get`
    builds a client, and each client builds its own by reading the whole CA bundle, which costs
    far more CPU than a local request. A wait asks many times a second for as long as it lasts."""
    return httpx.create_ssl_context()


def http_ok(url: str, timeout: float = 2.0) -> Callable[[], bool]:
    def check() -> bool:
        try:
            # A new connection each time, as a probe: a server that restarted is asked anew.
            return httpx.get(url, timeout=timeout, verify=tls_context()).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def answers_post(url: str, body: bytes, headers: dict[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            answer = httpx.post(url, content=body, headers=headers, timeout=5, verify=tls_context())
            return answer.status_code == 200
        except httpx.HTTPError:
            return False

    return check


def tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    return check


def wait_for_http(process: ManagedProcess, url: str, timeout: float) -> float:
    """Seconds until `url` answers 200."""
    return wait_until(http_ok(url), timeout, f"{process.name} at {url}", process)


def wait_for_answer(
    process: ManagedProcess, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> float:
    """Seconds until a prediction request to `url` answers 200: a server's cold start to its
    first real answer, not to a health check that may pass before the model is loaded."""
    answers = answers_post(url, body, headers)
    return wait_until(
        answers, timeout, f"an answer of {process.name} at {url}", process, interval=0.1
    )
