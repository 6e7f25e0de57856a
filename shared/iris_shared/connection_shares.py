"""Keep-alive connections spread evenly over a server's worker processes.

The workers of a server share one listening socket, and the kernel hands each new connection
to whichever worker accepts first; uvloop then accepts every connection that waits. A client
that opens a few keep-alive connections at once (a batch client, a gateway's pool) can find
them all on one worker, which then serves alone while the other idles, for as long as the
connections live: `make bench`'s four batch connections landed so in about one run of ten
here, which then answered a third fewer requests. Servers behind load balancers fix the same
problem by asking clients to reconnect (gRPC's MAX_CONNECTION_AGE); so does this, only when it
pays: a worker that holds more than one connection over its least busy peer answers the next
request on one of them with `Connection: close`, and the client's new connection goes to
whichever worker accepts first, most often the idle one. HTTP/1.1 clients reconnect on such an
answer by themselves.

The counts live in a table in the server's runtime folder, one 8-byte slot per worker, made by
the master (`create_table`). A worker claims a free slot with a lock that dies with it, so a
restarted worker takes its predecessor's slot over, counting from zero (the connections died
with it). Reading the peers' counts is reading shared memory. Each connection asked to
reconnect counts in `iris_http_connections_rebalanced_total`, which the service's /metrics
merges from every worker's files as it merges the rest.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import Any

from iris_shared.life_locks import first_free

# The table's path, set by the master for its workers (iris_shared.server).
CONNECTIONS_ENV = "IRIS_SERVER_CONNECTIONS_TABLE"
_SLOT_BYTES = 8


class NoFreeSlot(RuntimeError):
    """Every slot is held: a worker started while the one it replaces still holds its own."""


def create_table(path: Path, workers: int) -> None:
    """A zeroed table of `workers` slots at `path`."""
    path.write_bytes(bytes(_SLOT_BYTES * workers))


class ConnectionShares:
    """This worker's slot of the table, and its view of the others'."""

    def __init__(self, path: Path) -> None:
        self._lock, self.slot = self._claim_slot(path)
        with path.open("r+b") as table:
            self._memory = mmap.mmap(table.fileno(), 0)
        self._counts = memoryview(self._memory).cast("q")
        self._counts[self.slot] = 0
        # Here, in a worker, not at import: the master imports this module too and needs none
        # of prometheus_client. In no registry: the service's /metrics reads every process's
        # files (PROMETHEUS_MULTIPROC_DIR), whichever registry a metric was made in.
        from prometheus_client import Counter

        self.rebalanced: Any = Counter(
            "iris_http_connections_rebalanced",
            "Keep-alive connections this server answered with Connection: close to spread "
            "them evenly over its worker processes.",
            registry=None,
        )

    @staticmethod
    def _claim_slot(path: Path) -> tuple[int, int]:
        slots = os.path.getsize(path) // _SLOT_BYTES
        claimed = first_free(path.with_name(f"{path.name}-{slot}.lock") for slot in range(slots))
        if claimed is None:
            raise NoFreeSlot(f"every slot of {path} is taken: more workers than the master made")
        return claimed

    def opened(self) -> None:
        self._counts[self.slot] += 1

    def closed(self) -> None:
        self._counts[self.slot] -= 1

    def rebalance(self) -> None:
        """One connection of this worker's is leaving to reconnect: count it out now, so that
        the next request on another connection does not leave too."""
        self.closed()
        self.rebalanced.inc()

    def crowded(self) -> bool:
        """Whether this worker holds more than one connection over its least busy peer."""
        counts = self._counts.tolist()
        mine = counts.pop(self.slot)
        return bool(counts) and mine > min(counts) + 1

    def close(self) -> None:
        self._counts.release()
        self._memory.close()
        os.close(self._lock)


_shares: ConnectionShares | None = None


def worker_shares() -> ConnectionShares | None:
    """This process's slot, claimed on first use; None outside a multi-process server, and
    while no slot is free (its connections are then left where they land, and the next one
    asks again)."""
    global _shares
    if _shares is None and (path := os.environ.get(CONNECTIONS_ENV)):
        with contextlib.suppress(NoFreeSlot):
            _shares = ConnectionShares(Path(path))
    return _shares
