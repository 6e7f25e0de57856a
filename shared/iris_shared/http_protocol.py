"""uvicorn's httptools protocol with limits on how long and how large a request's head may be,
sending each answer in one write (`CorkedTransport`).

uvicorn bounds neither: a client that connects and sends nothing, or sends a header line now and
then, or headers without end, holds its connection (and the parser's memory) for as long as it
likes. Here the request line and headers must arrive within `HEADER_READ_TIMEOUT_S` of the
connection or of the request's first byte (408), and take at most `MAX_HEADER_BYTES` (431);
either way the answer is the error envelope and the connection is closed. The body has its own
limit, in `iris_shared.http.ServiceMiddleware`.

In a server of several workers, each protocol object counts its connection in the worker's share
(`iris_shared.connection_shares`), and a worker that holds too many of them answers one
request with `Connection: close` so that its client reconnects, to a less busy worker. It does
so the way uvicorn's own graceful shutdown ends a connection after its answer: the request
cycle's `keep_alive` set to false.

uvicorn builds one protocol object per connection from the class given as `http=`; with several
workers the class travels to each worker by name, so its limits come from the environment that
`iris_shared.server.run` sets before the workers start.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from iris_shared.connection_shares import ConnectionShares, worker_shares

HEADER_TIMEOUT_ENV = "IRIS_HEADER_READ_TIMEOUT_S"
MAX_HEADER_BYTES_ENV = "IRIS_MAX_HEADER_BYTES"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 32 * 1024


def _refusal(status: int, reason: bytes, error: str, message: str) -> bytes:
    body = json.dumps({"error": error, "message": message}).encode()
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class CorkedTransport(asyncio.Transport):
    """A transport that holds a write back until the next one, and sends both in one go.

    uvicorn writes a response's status line and headers, then its body, as two writes; uvloop
    sends each at once, so every answer costs two send calls and reaches the client as two
    TCP segments, each waking the reader. Here the first write waits for the second (or for
    the end of the event loop's iteration, or for `close`), and the two leave as one
    `writelines`: one system call, one segment for a small answer. Nothing waits longer than
    the current iteration of the loop, and the order of the bytes never changes.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._held: bytes | bytearray | memoryview | None = None
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._send_held)
            return
        self._held = None
        self._transport.writelines((held, data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._send_held()
        self._transport.writelines(list_of_data)

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._send_held()
        self._transport.close()

    def write_eof(self) -> None:
        self._send_held()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol`, plus a deadline and a size limit for each request's head, writing
    each answer in one go (`CorkedTransport`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
        self.max_header_bytes = int(os.environ.get(MAX_HEADER_BYTES_ENV) or DEFAULT_MAX_BYTES)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._reading_head = True
        self._refused = False
        # Bytes received while the head is incomplete (a head that never ends), and bytes of
        # the head parsed so far (a large head that arrives at once).
        self._received_head_bytes = 0
        self._parsed_head_bytes = 0
        # This worker's share of the server's connections, while this one counts in it.
        self._shares: ConnectionShares | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport))
        self._arm_head_deadline()
        self._shares = worker_shares()
        if self._shares is not None:
            self._shares.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self._leave_shares()
        super().connection_lost(exc)

    def _leave_shares(self) -> None:
        if self._shares is not None:
            self._shares.closed()
            self._shares = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head:
            self._received_head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._received_head_bytes > self.max_header_bytes:
            self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first request's deadline runs from the connection; a later one's from its first
        # byte (an idle keep-alive connection is uvicorn's to close).
        if self._head_deadline is None:
            self._arm_head_deadline()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)
            self._count_parsed(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)
            self._count_parsed(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._reading_head = False
        self._disarm_head_deadline()
        super().on_headers_complete()
        cycle = self.cycle
        # Not with requests pipelined behind this one: closing after it would drop them.
        if (
            self._shares is not None
            and cycle is not None
            and cycle.keep_alive
            and not self.pipeline
            and self._shares.crowded()
        ):
            cycle.keep_alive = False
            self._shares.rebalance()
            self._shares = None

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        # The next byte starts the next request's head. Not sooner: an app may answer (413, say)
        # before the body is read, and the rest of that body is still this request's.
        self._reading_head = True
        self._received_head_bytes = self._parsed_head_bytes = 0
        super().on_message_complete()

    def _count_parsed(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.max_header_bytes:
            self._refuse_large_head()

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._reading_head and not self._refused:
            self._refuse(
                _refusal(
                    408,
                    b"Request Timeout",
                    "request_timeout",
                    f"The request line and headers did not arrive within "
                    f"{self.header_timeout_s:g} s.",
                )
            )

    def _refuse_large_head(self) -> None:
        if not self._refused:
            self._refuse(
                _refusal(
                    431,
                    b"Request Header Fields Too Large",
                    "headers_too_large",
                    f"The request line and headers take more than {self.max_header_bytes} bytes.",
                )
            )

    def _refuse(self, response: bytes) -> None:
        # Nothing more from this connection is parsed or served; what was parsed is dropped.
        self._refused = True
        self._disarm_head_deadline()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
