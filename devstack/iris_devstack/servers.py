"""An ASGI app behind a real uvicorn server in a background thread, for tests.

The services' unit tests use it instead of Starlette's TestClient, so requests go through a
real server, sockets and all (httpx's own tests do the same).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from iris_devstack.processes import free_port


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
