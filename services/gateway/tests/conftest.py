"""Gateway unit tests: the real app served by uvicorn in a thread, in front of a stub predictor
(also a real HTTP server) and, for the tests that ask for `unit_redis`, a real Redis started
for this package. Those tests are marked `integration` here, so `pytest -m "not integration"`
(`make test-unit`) starts no process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis
from fastapi import FastAPI, Request, Response

from iris_devstack.processes import free_port
from iris_devstack.redis import redis_server
from iris_devstack.servers import serve_in_thread
from iris_gateway.app import create_app
from iris_gateway.config import GatewaySettings

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

    # The other protocols' paths answer what they were sent, as the predictor saw it: the
    # gateway's tests check what passes through, not what a predictor would answer.
    async def echo(request: Request) -> Response:
        body = await request.body()
        seen = {
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_bytes": len(body),
        }
        state["protocol_requests"].append({**seen, "body": body})
        if body.startswith(b"binary:"):
            # Answers in the binary tensor extension's shape: JSON, then raw bytes.
            header = json.dumps(seen).encode()
            return Response(
                header + body,
                media_type="application/octet-stream",
                headers={
                    "Inference-Header-Content-Length": str(len(header)),
                    "Iris-Request-ID": "0123456789abcdef0123456789abcdef",
                },
            )
        if request.headers.get("content-type") == "text/plain":
            # MLflow's 415, which is not JSON.
            return Response("Unsupported content type", status_code=415, media_type="text/plain")
        return answer(seen, 200)

    state["protocol_requests"] = []
    echoed = [
        ("GET", "/v2"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2/health/ready"),
        ("GET", "/v2/models/{name}"),
        ("GET", "/v2/models/{name}/versions/{version}"),
        ("GET", "/v2/models/{name}/ready"),
        ("GET", "/v2/models/{name}/versions/{version}/ready"),
        ("POST", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/{name}/versions/{version}/infer"),
        ("POST", "/invocations"),
        ("GET", "/ping"),
        ("GET", "/health"),
        ("GET", "/version"),
        # Paths the gateway must never reach by a model name such as "..".
        ("POST", "/v2/infer"),
        ("POST", "/webhooks/mlflow"),
    ]
    for method, path in echoed:
        app.add_api_route(path, echo, methods=[method])

    return app, state


def closed_port_url(scheme: str = "http") -> str:
    """A URL on which nothing listens: connections are refused at once."""
    return f"{scheme}://127.0.0.1:{free_port()}"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `integration` every test that needs the Redis process, directly or through a
    fixture (such as `gateway`): the mark follows the need, so it cannot be forgotten."""
    for item in items:
        if "unit_redis" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="package")
def unit_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this package's own: jobs queued here never reach a session worker."""
    with redis_server(tmp_path_factory.mktemp("gateway-unit-redis")) as url:
        yield url


@pytest.fixture(scope="package")
def serve() -> Iterator[Callable[..., str]]:
    """Start an app (or a gateway built from settings overrides) and return its base URL."""
    with ExitStack() as servers:
        yield lambda app: servers.enter_context(serve_in_thread(app))


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


@pytest.fixture
def redis_client(unit_redis: str) -> Iterator[redis.Redis]:
    """A client of the package's Redis, to read and write what the services would."""
    client = redis.Redis.from_url(unit_redis, decode_responses=True)
    yield client
    client.close()
