"""Processes the benchmark starts itself, each in its own process group so that stopping it
stops its workers too, and small helpers to wait for them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


class StartupError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 25) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def start_process(
    name: str, command: list[str], env: dict[str, str], logs: Path, cwd: Path | None = None
) -> ManagedProcess:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return ManagedProcess(name, process, log)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Call `check` until it is true; return the seconds it took, or raise TimeoutError."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError
        time.sleep(interval)


def answers_200(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def wait_for_http(process: ManagedProcess, url: str, timeout: float) -> float:
    """Seconds until `url` answers 200; fails early, with the log, if the process exits."""

    def ready() -> bool:
        if process.process.poll() is not None:
            raise StartupError(
                f"{process.name} exited with code {process.process.returncode}:\n{process.tail()}"
            )
        return answers_200(url)()

    try:
        return wait_until(ready, timeout)
    except TimeoutError:
        raise StartupError(
            f"{process.name} not ready at {url} after {timeout:.0f}s:\n{process.tail()}"
        ) from None


def answers_post(url: str, body: bytes, headers: dict[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.post(url, content=body, headers=headers, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def wait_for_answer(
    process: ManagedProcess, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> float:
    """Seconds until a prediction request to `url` answers 200: a server's cold start to its
    first real answer, not to a health check that may pass before the model is loaded."""
    answers = answers_post(url, body, headers)

    def answered() -> bool:
        if process.process.poll() is not None:
            raise StartupError(
                f"{process.name} exited with code {process.process.returncode}:\n{process.tail()}"
            )
        return answers()

    try:
        return wait_until(answered, timeout, interval=0.1)
    except TimeoutError:
        raise StartupError(
            f"{process.name} gave no answer at {url} after {timeout:.0f}s:\n{process.tail()}"
        ) from None
