"""Predictor replicas behind one name: every address is used, and a dead one costs no request.

Two real servers listen on the same port of two loopback addresses (127.0.0.1 and 127.0.0.2),
as two compose replicas of one service do behind its DNS name; the resolver here says what a
DNS server would: the name has both addresses.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iris_devstack.processes import free_port
from iris_devstack.servers import serve_in_thread
from iris_gateway.metrics import GatewayMetrics
from iris_gateway.replicas import PredictorReplicas

ADDRESSES = ["127.0.0.1", "127.0.0.2"]


def replica_app(name: str, ready: bool = True) -> Starlette:
    async def readyz(request: Request) -> JSONResponse:
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def predict(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"replica": name})

    return Starlette(
        routes=[Route("/readyz", readyz), Route("/predict", predict, methods=["POST"])]
    )


@pytest.fixture
def port() -> int:
    return free_port()


async def both_addresses(host: str, port: int) -> list[str]:
    assert host == "predictor"
    return ADDRESSES


async def answers(replicas: PredictorReplicas, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        answer = await replicas.request("POST", "/predict", body=b"{}")
        seen[answer.json()["replica"] if answer.status_code == 200 else answer.status_code] += 1
    return seen


def run(port: int, stop_second: ExitStack | None = None) -> list[Counter[str]]:
    async def main() -> list[Counter[str]]:
        async with aiohttp.ClientSession() as session:
            replicas = PredictorReplicas(
                [f"http://predictor:{port}"],
                session,
                aiohttp.ClientTimeout(total=5),
                GatewayMetrics(),
                refresh_s=60,
                resolver=both_addresses,
            )
            await replicas.start()
            try:
                before = await answers(replicas, 20)
                if stop_second is not None:
                    stop_second.close()
                after = await answers(replicas, 20)
                await replicas.refresh()
                ready = Counter(str(r.ready) for r in replicas.replicas.values())
                return [before, after, ready]
            finally:
                await replicas.stop()

    return asyncio.run(main())


@pytest.fixture
def two_replicas(port: int) -> Iterator[tuple[ExitStack, ExitStack]]:
    with ExitStack() as first, ExitStack() as second:
        first.enter_context(serve_in_thread(replica_app("a"), host=ADDRESSES[0], port=port))
        second.enter_context(serve_in_thread(replica_app("b"), host=ADDRESSES[1], port=port))
        yield first, second


def test_requests_are_spread_over_every_address_of_the_name(
    port: int, two_replicas: tuple[ExitStack, ExitStack]
) -> None:
    before, _, ready = run(port)

    assert before == {"a": 10, "b": 10}
    assert ready == {"True": 2}


def test_a_replica_that_dies_costs_no_request_and_is_set_aside(
    port: int, two_replicas: tuple[ExitStack, ExitStack]
) -> None:
    _, second = two_replicas

    before, after, ready = run(port, stop_second=second)

    assert before == {"a": 10, "b": 10}
    assert after == {"a": 20}
    assert ready == {"True": 1, "False": 1}


def test_a_replica_that_is_not_ready_gets_no_request(port: int) -> None:
    with (
        serve_in_thread(replica_app("a"), host=ADDRESSES[0], port=port),
        serve_in_thread(replica_app("b", ready=False), host=ADDRESSES[1], port=port),
    ):
        before, _, _ = run(port)

    assert before == {"a": 20}
