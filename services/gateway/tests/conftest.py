"""Gateway unit tests: the real app served by uvicorn in a thread, in front of a stub predictor
(also a real HTTP server) and a real Redis started for this package."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from iris_gateway.app import create_app
from iris_gateway.config import GatewaySettings
from tests.support.processes import ManagedProcess, free_port, start_redis

TOKEN = "unit-test-token-0123456789"

SETOSA = {
    "predicted_species": "Iris-setosa",
    "probabilities": {"Iris-setosa": 0.98, "Iris-versicolor": 0.02, "Iris-virginica": 0.0},
    "model_version": "1",
}
TYPO_ERROR = {
    "error": "validation_error",
    "message": "Invalid request: petal_width is required; petal--width is not allowed.",
    "detail": [
        {"field": "petal_width", "problem": "is required"},
        {"field": "petal--width", "problem": "is not allowed (unknown field)"},
    ],
}
NOT_READY = {"error": "model_not_loaded", "message": "No model is loaded yet."}


def create_stub_predictor(delay_s: float = 0.0) -> tuple[FastAPI, dict[str, Any]]:
    """The app, and a dict of switches tests flip (`ready`)."""
    app = FastAPI()
    state: dict[str, Any] = {"ready": True, "requests": [], "typo_error": TYPO_ERROR}

    def answer(body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await asyncio.sleep(delay_s)
        state["requests"].append(dict(request.headers))
        body = json.loads(await request.body())
        if "petal--width" in body:
            return answer(TYPO_ERROR, 400)
        return answer({**SETOSA, "seen_request_id": request.headers.get("x-request-id")})

    @app.post("/predict/batch")
    async def predict_batch(request: Request) -> Response:
        body = json.loads(await request.body())
        rows = [{k: v for k, v in SETOSA.items() if k != "model_version"}] * len(body["instances"])
        return answer({"predictions": rows, "model_version": "1"})

    @app.get("/model")
    async def model() -> Response:
        if not state["ready"]:
            return answer(NOT_READY, 503)
        return answer(
            {
                "name": "Iris-LogisticRegression",
                "version": "1",
                "alias": "production",
                "loaded_at": "2026-01-01T00:00:00Z",
            }
        )

    @app.get("/readyz")
    async def readyz() -> Response:
        return answer(
            {"status": "ready"} if state["ready"] else NOT_READY, 200 if state["ready"] else 503
        )

    return app, state


class ThreadedServer:
    """Serve an ASGI app on a free port from a background thread (lifespan included)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def closed_port_url(scheme: str = "http") -> str:
    """A URL on which nothing listens: connections are refused at once."""
    return f"{scheme}://127.0.0.1:{free_port()}"


@pytest.fixture(scope="package")
def unit_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this package's own: jobs queued here never reach a session worker."""
    process: ManagedProcess
    process, url = start_redis(tmp_path_factory.mktemp("gateway-unit-redis"))
    yield url
    process.stop()


@pytest.fixture(scope="package")
def serve() -> Iterator[Callable[..., str]]:
    """Start an app (or a gateway built from settings overrides) and return its base URL."""
    servers: list[ThreadedServer] = []

    def start(app: Any) -> str:
        servers.append(ThreadedServer(app).start())
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


def gateway_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "API_TOKEN": TOKEN,
        "REDIS_URL": closed_port_url("redis"),
        "MLFLOW_TRACKING_URI": closed_port_url(),
        "predictor_url": closed_port_url(),
        "predictor_timeout_s": 2.0,
        "redis_timeout_s": 0.5,
        **overrides,
    }
    return GatewaySettings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="package")
def start_gateway_app(serve: Callable[..., str]) -> Callable[..., str]:
    def start(**overrides: Any) -> str:
        return serve(create_app(gateway_settings(**overrides)))

    return start


@pytest.fixture(scope="package")
def stub_predictor(serve: Callable[..., str]) -> tuple[str, dict[str, Any]]:
    app, state = create_stub_predictor()
    return serve(app), state


@pytest.fixture(scope="package")
def slow_predictor(serve: Callable[..., str]) -> str:
    app, _ = create_stub_predictor(delay_s=3.0)
    return serve(app)


@pytest.fixture(scope="package")
def token() -> str:
    return TOKEN
