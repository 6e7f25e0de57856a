"""A tiny service served by `iris_shared.server.run`, for test_server.py's process tests.

    TINY_PORT=8000 TINY_WORKERS=2 TINY_STATE_DIR=/tmp/x python tiny_service.py

    GET /pid             the answering worker's process id
    GET /slow?seconds=S  the same, S seconds later; touches <state>/slow-started when it begins
    GET /metrics         every worker's metrics, merged (prometheus_client's multiprocess mode)

Each worker touches <state>/stopped/<pid> at the end of its lifespan shutdown, as the
predictor's recorder flushes its log there; with TINY_HANG_ON_SHUTDOWN=1 that shutdown never
ends instead. With TINY_IMPORT_DELAY_S, every process spends that long importing this module,
as a real service's workers do on a busy machine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

STATE = Path(os.environ.get("TINY_STATE_DIR", "."))
# Each spawned worker imports this module before it can answer its master's health check.
time.sleep(float(os.environ.get("TINY_IMPORT_DELAY_S", "0")))


async def pid(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(os.getpid()))


async def metrics(request: Request) -> PlainTextResponse:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return PlainTextResponse(generate_latest(registry).decode())


async def slow(request: Request) -> PlainTextResponse:
    (STATE / "slow-started").touch()
    await asyncio.sleep(float(request.query_params["seconds"]))
    return PlainTextResponse(str(os.getpid()))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    if os.environ.get("TINY_HANG_ON_SHUTDOWN") == "1":
        await asyncio.Event().wait()
    (STATE / "stopped" / str(os.getpid())).touch()


def create_app() -> Starlette:
    routes = [Route("/pid", pid), Route("/slow", slow), Route("/metrics", metrics)]
    return Starlette(routes=routes, lifespan=lifespan)


if __name__ == "__main__":
    from iris_shared.server import run
    from iris_shared.settings import HTTPServiceSettings

    run(
        "tiny",
        "tiny_service:create_app",
        HTTPServiceSettings(
            host="127.0.0.1",
            port=int(os.environ["TINY_PORT"]),
            workers=int(os.environ["TINY_WORKERS"]),
            graceful_shutdown_s=int(os.environ.get("TINY_GRACEFUL_SHUTDOWN_S", "5")),
            worker_healthcheck_timeout_s=int(os.environ.get("TINY_HEALTHCHECK_TIMEOUT_S", "60")),
        ),
    )
