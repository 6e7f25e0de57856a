"""Hostile clients for `make soak`: uploads that trickle in, and a flood of anonymous batches.

Both run beside the soak's ordinary traffic, which must not notice them (its failed requests
are counted as always): trickling uploads must each end in a 408 without holding a request
slot, and the flood's answers kept for feedback must stay within the predictor's byte budget,
which Redis's memory before and after shows.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis

from iris_shared.feedback import FeedbackKeys

TRICKLING_CONNECTIONS = 1200
TRICKLE_EVERY_S = 5.0
# The server closes an upload it gave up on (BODY_READ_TIMEOUT_S, 10 s); a byte sent after that
# would make TCP reset the connection and lose the answer, so the last goes well before.
LAST_TRICKLE_S = 8.0
FLOOD_BATCH_ROWS = 10_000
FLOOD_CONCURRENCY = 4
FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def trickling_uploads(
    url: str, connections: int = TRICKLING_CONNECTIONS, answer_within_s: float = 30.0
) -> dict[str, Any]:
    """Open `connections` uploads to POST /predict that send one byte every 5 s; the status
    each was answered with before the server closed it, and how long that took."""
    parts = urlsplit(url)

    async def upload() -> str:
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except OSError as exc:
            return f"connect: {type(exc).__name__}"
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        opened = time.monotonic()
        try:
            read = asyncio.ensure_future(reader.read())
            while not read.done():
                await asyncio.wait([read], timeout=TRICKLE_EVERY_S)
                if not read.done() and time.monotonic() - opened < LAST_TRICKLE_S:
                    writer.write(b" ")
            answer = read.result()
        except (OSError, asyncio.IncompleteReadError) as exc:
            return f"transport: {type(exc).__name__}"
        finally:
            writer.close()
        head = answer.split(b"\r\n", 1)[0].split()
        return head[1].decode() if len(head) > 1 else "closed without an answer"

    async def all_uploads() -> list[str]:
        return await asyncio.wait_for(
            asyncio.gather(*(upload() for _ in range(connections))), answer_within_s
        )

    started = time.monotonic()
    try:
        outcomes = Counter(asyncio.run(all_uploads()))
    except TimeoutError:
        outcomes = Counter({f"no answer within {answer_within_s:g} s": connections})
    return {
        "connections": connections,
        "outcomes": dict(outcomes),
        "answered_408": outcomes.get("408", 0),
        "seconds": round(time.monotonic() - started, 1),
    }


def anonymous_flood(url: str, batches: int) -> dict[str, Any]:
    """POST `batches` 10,000-row batches without any credential; their status codes."""
    body = orjson.dumps({"instances": [FLOWER] * FLOOD_BATCH_ROWS})
    headers = {"Content-Type": "application/json"}

    def send(_: int) -> tuple[str, str | None]:
        try:
            response = httpx.post(f"{url}/predict/batch", content=body, headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        answered = response.json()["request_id"] if response.status_code == 200 else None
        return str(response.status_code), answered

    started = time.monotonic()
    with ThreadPoolExecutor(FLOOD_CONCURRENCY) as pool:
        sent = list(pool.map(send, range(batches)))
    answered = [request_id for _, request_id in sent if request_id is not None]
    return {
        "batches": batches,
        "rows_each": FLOOD_BATCH_ROWS,
        "request_bytes_each": len(body),
        "outcomes": dict(Counter(status for status, _ in sent)),
        # Every answered batch is logged like any other request.
        "answered_ids": answered,
        "rows_answered": len(answered) * FLOOD_BATCH_ROWS,
        "seconds": round(time.monotonic() - started, 1),
    }


def redis_memory(client: redis.Redis, namespace: str) -> dict[str, Any]:
    """Redis's memory, its cap, and the bytes the predictor counts for the answers it keeps."""
    memory = client.info("memory")
    kept = client.get(FeedbackKeys(namespace).prediction_bytes)
    return {
        "used_memory": memory["used_memory"],
        "maxmemory": memory.get("maxmemory", 0),
        "maxmemory_policy": memory.get("maxmemory_policy"),
        "kept_answer_bytes": int(kept or 0),
    }
