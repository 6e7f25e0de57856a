"""Every answer leaves in one send (CorkedTransport): no byte lost, reordered or kept waiting
past the event loop's iteration."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from iris_shared.http_protocol import CorkedTransport

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class SendCounter(asyncio.Transport):
    """A transport that only records what it was asked to send, one list per send call."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append([bytes(data)])

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.sends.append([bytes(data) for data in list_of_data])

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def test_a_head_and_its_body_leave_in_one_send() -> None:
    async def main() -> list[list[bytes]]:
        counter = SendCounter()
        corked = CorkedTransport(counter)
        corked.write(b"head")
        corked.write(b"body")
        corked.write(b"next head")
        await asyncio.sleep(0)
        return counter.sends

    assert asyncio.run(main()) == [[b"head", b"body"], [b"next head"]]


def test_writelines_sends_what_was_held_first() -> None:
    async def main() -> list[list[bytes]]:
        counter = SendCounter()
        corked = CorkedTransport(counter)
        corked.write(b"held")
        corked.writelines([b"a", b"b"])
        await asyncio.sleep(0)
        return counter.sends

    assert asyncio.run(main()) == [[b"held"], [b"a", b"b"]]


def test_an_aborted_connection_sends_nothing_more() -> None:
    async def main() -> list[list[bytes]]:
        counter = SendCounter()
        corked = CorkedTransport(counter)
        corked.write(b"held")
        corked.abort()
        await asyncio.sleep(0)
        return counter.sends

    assert asyncio.run(main()) == []


def test_over_a_real_connection_a_lone_write_arrives_and_close_sends_the_rest() -> None:
    async def main() -> tuple[bytes, bytes]:
        accepted: asyncio.Queue[CorkedTransport] = asyncio.Queue()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.Transport)
                accepted.put_nowait(CorkedTransport(transport))

        server = await asyncio.get_running_loop().create_server(Accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        corked = await asyncio.wait_for(accepted.get(), 5)
        # Nothing follows it: it must not wait for a next write that never comes.
        corked.write(CONTINUE)
        alone = await asyncio.wait_for(reader.readexactly(len(CONTINUE)), 5)
        corked.write(b"head,")
        corked.write(b"body,")
        corked.write(b"last")
        corked.close()
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return alone, rest

    assert asyncio.run(main()) == (CONTINUE, b"head,body,last")
