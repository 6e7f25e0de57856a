"""The service stack every HTTP service is built on: ids, load shedding, body limits, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import Counter

from iris_devstack.servers import serve_in_thread
from iris_shared.http import ServiceError
from iris_shared.http_protocol import (
    HEADER_TIMEOUT_ENV,
    MAX_HEADER_BYTES_ENV,
    GuardedHttpToolsProtocol,
)
from iris_shared.metrics import KEPT_MODEL_VERSIONS, ServiceMetrics
from iris_shared.plain_routes import PlainRoute
from iris_shared.service import create_service_app
from iris_shared.settings import HTTPServiceSettings


class Teapot(ServiceError):
    status_code = 418
    error = "teapot"


def stack_app(
    max_concurrent_requests: int = 2, max_body_bytes: int = 1000, body_read_timeout_s: float = 10
) -> FastAPI:
    async def slow(request: Request) -> Response:
        """Answer after a while."""
        await request.body()
        await asyncio.sleep(0.5)
        return Response(b"{}", media_type="application/json")

    async def echo(request: Request) -> Response:
        """Answer the body."""
        return Response(await request.body(), media_type="application/json")

    async def teapot(request: Request) -> Response:
        """Refuse, as a domain error."""
        raise Teapot("I am a teapot.", headers={"X-Why": "tea"})

    async def explode(request: Request) -> Response:
        """Fail in a way nobody planned for."""
        raise RuntimeError("boom")

    async def healthz(request: Request) -> Response:
        """Answer at once."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def item(request: Request) -> Response:
        """Answer the path's item."""
        return Response(request.path_params["name"].encode(), media_type="text/plain")

    routes = [
        PlainRoute("/slow", slow),
        PlainRoute("/echo", echo),
        PlainRoute("/teapot", teapot, methods=["GET"]),
        PlainRoute("/explode", explode),
        PlainRoute("/healthz", healthz, methods=["GET"]),
        PlainRoute("/items/{name}", item, methods=["GET"]),
    ]
    # A FastAPI route beside them keeps its dependencies.
    router = APIRouter()

    async def refuse() -> None:
        raise Teapot("Refused by a dependency.")

    @router.get("/guarded", dependencies=[Depends(refuse)])
    async def guarded() -> dict[str, str]:
        """Answer only past the dependency."""
        return {"status": "ok"}

    settings = HTTPServiceSettings(
        max_concurrent_requests=max_concurrent_requests,
        max_body_bytes=max_body_bytes,
        body_read_timeout_s=body_read_timeout_s,
    )
    return create_service_app(
        title="t",
        description="t",
        version="0",
        settings=settings,
        metrics=ServiceMetrics(),
        routers=[router],
        plain_routes=routes,
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


def test_repeated_requests_to_a_plain_route_are_answered_alike() -> None:
    # Plain routes are served before FastAPI; a client must not be able to tell: answers,
    # headers and metrics as FastAPI's would be, from the first request on.
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


def test_a_plain_route_gets_its_path_parameters_and_its_template_in_the_metrics(url: str) -> None:
    answer = httpx.get(f"{url}/items/tulip")
    text = httpx.get(f"{url}/metrics").text

    assert (answer.status_code, answer.text) == (200, "tulip")
    assert 'http_requests_total{handler="/items/{name}",method="GET",status="2xx"}' in text


def test_a_wrong_method_on_a_plain_path_says_which_are_allowed(url: str) -> None:
    response = httpx.post(f"{url}/items/tulip", json={})

    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert response.headers["Allow"] == "GET, HEAD"


def test_fastapi_routes_beside_plain_ones_keep_their_dependencies(url: str) -> None:
    for _ in range(3):
        response = httpx.get(f"{url}/guarded")
        assert response.status_code == 418
        assert response.json()["message"] == "Refused by a dependency."


def guarded_app(calls: list[str]) -> FastAPI:
    async def check(request: Request) -> None:
        calls.append(request.headers.get("X-Token", ""))
        if request.headers.get("X-Token") != "open":
            raise Teapot("No token.")

    async def sesame(request: Request) -> Response:
        """Open."""
        return Response(b"{}", media_type="application/json")

    async def csv(request: Request) -> Response:
        """Read any body."""
        return Response(await request.body(), media_type="text/plain")

    return create_service_app(
        title="t",
        description="t",
        version="0",
        settings=HTTPServiceSettings(),
        metrics=ServiceMetrics(),
        routers=[],
        plain_routes=[
            PlainRoute("/sesame", sesame, guards=[check]),
            PlainRoute("/csv", csv, media_types=None),
            PlainRoute("/json-or-csv", csv, media_types=("application/json", "text/csv")),
        ],
    )


def test_a_plain_routes_guards_run_on_every_request() -> None:
    calls: list[str] = []
    with serve_in_thread(guarded_app(calls)) as base_url, httpx.Client(base_url=base_url) as client:
        refused = [client.post("/sesame", json={}) for _ in range(3)]
        opened = client.post("/sesame", json={}, headers={"X-Token": "open"})

    assert [r.status_code for r in refused] == [418, 418, 418]
    assert opened.status_code == 200
    assert calls == ["", "", "", "open"]


def test_a_plain_route_takes_the_bodies_it_declares_and_no_others() -> None:
    with serve_in_thread(guarded_app([])) as base_url, httpx.Client(base_url=base_url) as client:
        anything = client.post("/csv", content=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"})
        untyped = client.post("/csv", content=b"\x00\x01")
        listed = client.post(
            "/json-or-csv", content=b"a\n1\n", headers={"Content-Type": "text/csv; charset=utf-8"}
        )
        unlisted = client.post(
            "/json-or-csv", content=b"a=1", headers={"Content-Type": "text/plain"}
        )

    assert (anything.status_code, anything.text) == (200, "a,b\n1,2\n")
    assert (untyped.status_code, untyped.content) == (200, b"\x00\x01")
    assert listed.status_code == 200
    assert unlisted.status_code == 415
    assert unlisted.json()["error"] == "unsupported_media_type"


def test_a_fastapi_route_hidden_by_a_plain_one_is_refused_when_the_app_is_built() -> None:
    router = APIRouter()

    @router.post("/echo", dependencies=[Depends(lambda: None)])
    async def echo() -> dict[str, str]:
        """Never reached."""
        return {}

    async def plain(request: Request) -> Response:
        """Answer."""
        return Response(b"{}")

    with pytest.raises(ValueError, match="would never run"):
        create_service_app(
            title="t",
            description="t",
            version="0",
            settings=HTTPServiceSettings(),
            metrics=ServiceMetrics(),
            routers=[router],
            plain_routes=[PlainRoute("/echo", plain)],
        )


# Slow and oversized requests: the stack's own protocol (headers) and middleware (bodies).
SLOW_S = 0.5


@pytest.fixture(scope="module")
def guarded_url() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(HEADER_TIMEOUT_ENV, str(SLOW_S))
        env.setenv(MAX_HEADER_BYTES_ENV, "4096")
        app = stack_app(max_concurrent_requests=2, body_read_timeout_s=SLOW_S)
        with serve_in_thread(app, http=GuardedHttpToolsProtocol) as base_url:
            yield base_url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def answer_and_close(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """The status and JSON body the server sent before closing the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_body_that_does_not_arrive_in_time_is_408_and_holds_no_slot(guarded_url: str) -> None:
    # More trickling uploads than the server takes requests in flight (2).
    trickling = [connect(guarded_url) for _ in range(5)]
    for sock in trickling:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )

    ordinary = httpx.post(f"{guarded_url}/echo", json={"ok": True}, timeout=5)
    refusals = [answer_and_close(sock) for sock in trickling]

    assert ordinary.status_code == 200, ordinary.text
    for status, body in refusals:
        assert status == 408
        assert body["error"] == "request_timeout"


def test_headers_that_do_not_arrive_in_time_are_408(guarded_url: str) -> None:
    with connect(guarded_url) as idle, connect(guarded_url) as trickling:
        trickling.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()

        for sock in (idle, trickling):
            status, body = answer_and_close(sock)
            assert status == 408
            assert body["error"] == "request_timeout"
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("at_once", [True, False])
def test_headers_over_the_limit_are_431(guarded_url: str, at_once: bool) -> None:
    header = b"X-Pad: " + b"a" * 5000 + b"\r\n"
    with connect(guarded_url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        if at_once:
            sock.sendall(header + b"\r\n")
        else:
            # A header line that never ends, in pieces: just past the limit, so that the server
            # has read everything sent when it refuses (unread bytes would reset the connection).
            for start in range(0, 4500, 500):
                sock.sendall(header[start : start + 500])
                time.sleep(0.01)
        status, body = answer_and_close(sock)

    assert status == 431
    assert body["error"] == "headers_too_large"


def test_a_body_refused_before_it_is_read_is_413_and_nothing_else(guarded_url: str) -> None:
    # The answer comes while the client is still sending; the rest of the body is still that
    # request's and must not be parsed as the next request's head (which once answered 431).
    body = b"[" + b"1," * 1_000_000 + b"1]"
    with connect(guarded_url) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        with contextlib.suppress(ConnectionResetError):
            sock.sendall(body)
        sock.settimeout(SLOW_S * 4)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass

    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"headers_too_large" not in data
    assert data.count(b"HTTP/1.1 ") == 1


def test_a_keep_alive_connection_serves_request_after_request(guarded_url: str) -> None:
    with httpx.Client() as client:
        answers = [client.post(f"{guarded_url}/echo", json={"n": n}) for n in range(3)]
        time.sleep(SLOW_S * 2)
        answers.append(client.post(f"{guarded_url}/echo", json={"n": 3}))

    assert [a.json() for a in answers] == [{"n": n} for n in range(4)]


def test_model_version_series_are_kept_for_the_last_versions_only() -> None:
    metrics = ServiceMetrics()
    served = Counter(
        "served_total", "Answers per version.", ["model_version"], registry=metrics.registry
    )
    for version in range(1, 12):
        served.labels(str(version)).inc()

    text = metrics.exposition().decode()

    exposed = sorted(
        int(line.split('"')[1]) for line in text.splitlines() if line.startswith("served_total{")
    )
    assert exposed == list(range(12 - KEPT_MODEL_VERSIONS, 12))
    assert "http_requests_total" in text
