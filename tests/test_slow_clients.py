"""Slow clients on the real gateway: bodies that trickle in hold a connection, never a slot.

A thousand connections that announce a body and send it a byte at a time used to fill every
request slot of the gateway's processes, and ordinary predictions got 503s. The body must now
arrive within BODY_READ_TIMEOUT_S (10 s): until then it holds only its connection, and after
that it is answered 408 and closed.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
TRICKLING = 1200
BODY_READ_TIMEOUT_S = 10


async def open_trickling_upload(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /predict HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    await writer.drain()
    return reader, writer


async def trickle(writer: asyncio.StreamWriter, until: float) -> None:
    """One more byte every 5 s, as a slow upload would; none after `until` (monotonic), so that
    no byte is in flight when the server closes the connection (TCP would reset it)."""
    while time.monotonic() + 5 < until:
        await asyncio.sleep(5)
        writer.write(b" ")
        await writer.drain()


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    data = await asyncio.wait_for(reader.read(), timeout=BODY_READ_TIMEOUT_S + 20)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def predictions_while_they_trickle(url: str, count: int) -> tuple[list[int], list[float]]:
    statuses, latencies = [], []
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = await client.post(f"{url}/predict", json=SETOSA)
            latencies.append(time.perf_counter() - started)
            statuses.append(response.status_code)
            await asyncio.sleep(0.05)
    return statuses, latencies


def test_trickling_uploads_do_not_stop_other_clients_and_end_in_408(gateway_url: str) -> None:
    host, port = gateway_url.removeprefix("http://").split(":")

    async def scenario() -> tuple[list[int], list[float], float, list[tuple[int, dict[str, str]]]]:
        uploads = await asyncio.gather(
            *(open_trickling_upload(host, int(port)) for _ in range(TRICKLING))
        )
        opened = time.monotonic()
        last_byte = opened + BODY_READ_TIMEOUT_S - 2
        tricklers = [asyncio.create_task(trickle(writer, last_byte)) for _, writer in uploads]
        statuses, latencies = await predictions_while_they_trickle(gateway_url, 100)
        measured_within = time.monotonic() - opened
        await asyncio.gather(*tricklers)
        answers = await asyncio.gather(*(answer_of(reader) for reader, _ in uploads))
        for _, writer in uploads:
            writer.close()
        return statuses, latencies, measured_within, answers

    statuses, latencies, measured_within, answers = asyncio.run(scenario())

    # Every ordinary prediction was answered while all the uploads were still open.
    assert measured_within < BODY_READ_TIMEOUT_S, "the predictions took too long to measure"
    assert statuses == [200] * len(statuses)
    p99 = sorted(latencies)[int(0.99 * len(latencies)) - 1]
    assert p99 < 1.0, f"p99 {p99:.3f} s"
    # Then each upload was told why, and closed.
    assert {status for status, _ in answers} == {408}
    assert {body["error"] for _, body in answers} == {"request_timeout"}
