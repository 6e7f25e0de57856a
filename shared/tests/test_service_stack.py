"""The service stack every HTTP service is built on: ids, load shedding, body limits, errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response

from iris_shared.http import RawRoute, ServiceError
from iris_shared.metrics import ServiceMetrics
from iris_shared.service import create_service_app
from iris_shared.settings import HTTPServiceSettings
from iris_shared.testing import serve_in_thread


class Teapot(ServiceError):
    status_code = 418
    error = "teapot"


def stack_app(max_concurrent_requests: int = 2, max_body_bytes: int = 1000) -> FastAPI:
    router = APIRouter(route_class=RawRoute)

    @router.post("/slow")
    async def slow(request: Request) -> Response:
        """Answer after a while."""
        await request.body()
        await asyncio.sleep(0.5)
        return Response(b"{}", media_type="application/json")

    @router.post("/echo")
    async def echo(request: Request) -> Response:
        """Answer the body."""
        return Response(await request.body(), media_type="application/json")

    @router.get("/teapot")
    async def teapot(request: Request) -> Response:
        """Refuse, as a domain error."""
        raise Teapot("I am a teapot.", headers={"X-Why": "tea"})

    @router.post("/explode")
    async def explode(request: Request) -> Response:
        """Fail in a way nobody planned for."""
        raise RuntimeError("boom")

    @router.get("/healthz")
    async def healthz(request: Request) -> Response:
        """Answer at once."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    settings = HTTPServiceSettings(
        max_concurrent_requests=max_concurrent_requests, max_body_bytes=max_body_bytes
    )
    return create_service_app(
        title="t",
        description="t",
        version="0",
        settings=settings,
        metrics=ServiceMetrics(),
        routers=[router],
    )


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(stack_app()) as base_url:
        yield base_url


def test_overload_is_shed_at_once_with_retry_after(url: str) -> None:
    def post(_: int) -> httpx.Response:
        return httpx.post(f"{url}/slow", json={}, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, i) for i in range(8)]
        # Probes keep answering while the server sheds load.
        assert httpx.get(f"{url}/healthz").status_code == 200
        answers = [f.result() for f in futures]

    shed = [a for a in answers if a.status_code == 503]
    assert len([a for a in answers if a.status_code == 200]) >= 2
    assert shed, "nothing was shed beyond 2 requests in flight"
    for answer in shed:
        assert answer.json()["error"] == "overloaded"
        assert answer.headers["Retry-After"] == "1"
        assert answer.elapsed.total_seconds() < 0.4, "shedding waited for the slow requests"


def test_request_ids_are_kept_when_safe_and_made_otherwise(url: str) -> None:
    kept = httpx.post(f"{url}/echo", json={}, headers={"X-Request-ID": "abc-123"})
    replaced = httpx.post(f"{url}/echo", json={}, headers={"X-Request-ID": "bad id <script>"})

    assert kept.headers["X-Request-ID"] == "abc-123"
    assert replaced.headers["X-Request-ID"] != "bad id <script>"
    assert len(replaced.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("streamed", [False, True])
def test_a_body_over_the_limit_is_413_announced_or_streamed(url: str, streamed: bool) -> None:
    body = b'{"pad": "' + b"x" * 2000 + b'"}'
    content = iter([body[:1000], body[1000:]]) if streamed else body
    response = httpx.post(
        f"{url}/echo", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_a_huge_content_length_is_refused_not_a_crash(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n{}"
        )
        status_line = sock.recv(64).split(b"\r\n", 1)[0]

    # The HTTP parser or the middleware refuses it; either way a 4xx, never a 5xx.
    assert status_line.split()[1] in (b"400", b"413"), status_line


def test_a_body_that_is_not_json_is_415(url: str) -> None:
    response = httpx.post(f"{url}/echo", content=b"a=b", headers={"Content-Type": "text/plain"})

    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_a_domain_error_carries_its_status_code_and_headers(url: str) -> None:
    response = httpx.get(f"{url}/teapot")

    assert response.status_code == 418
    assert response.json() == {"error": "teapot", "message": "I am a teapot."}
    assert response.headers["X-Why"] == "tea"


def test_a_wrong_method_is_405_with_the_envelope(url: str) -> None:
    response = httpx.get(f"{url}/echo")

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_metrics_count_refusals_too(url: str) -> None:
    httpx.post(f"{url}/echo", content=b"a=b", headers={"Content-Type": "text/plain"})

    text = httpx.get(f"{url}/metrics").text

    assert 'http_requests_total{handler="/echo",method="POST",status="4xx"}' in text


def test_repeated_requests_to_a_raw_route_are_answered_alike() -> None:
    # The first request to a RawRoute goes through the router; later ones skip it. A client
    # must not be able to tell: same answers, same headers, same metrics.
    with serve_in_thread(stack_app()) as base_url, httpx.Client(base_url=base_url) as client:
        echoed = [client.post("/echo", json={"n": n}) for n in range(3)]
        teapots = [client.get("/teapot") for _ in range(3)]
        explosions = [client.post("/explode", json={}) for _ in range(3)]
        wrong_method = [client.put("/echo", json={}) for _ in range(2)]
        metrics = client.get("/metrics").text

    assert [r.json() for r in echoed] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(len(r.headers["X-Request-ID"]) == 32 for r in echoed + teapots + explosions)
    for answer in teapots:
        assert (answer.status_code, answer.headers["X-Why"]) == (418, "tea")
        assert answer.json() == {"error": "teapot", "message": "I am a teapot."}
    for answer in explosions:
        assert answer.status_code == 500
        assert answer.json() == {
            "error": "internal_error",
            "message": "An unexpected error occurred.",
        }
    assert {r.status_code for r in wrong_method} == {405}
    for line in (
        'http_requests_total{handler="/echo",method="POST",status="2xx"} 3.0',
        'http_requests_total{handler="/teapot",method="GET",status="4xx"} 3.0',
        'http_requests_total{handler="/explode",method="POST",status="5xx"} 3.0',
    ):
        assert line in metrics
