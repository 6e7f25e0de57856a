"""The predictor's replicas: every address behind the predictor setting, health-aware.

`GATEWAY_PREDICTOR_URL` names the replicas as a comma-separated list of base URLs
(`make up` with STACK_PREDICTORS > 1), as one host name that resolves to several addresses
(compose's `--scale predictor=3`, a Kubernetes headless Service), or both. Every
`refresh_s` the names are resolved again and each address is asked for `/readyz`, so replicas
that come and go are followed without restart.

Requests go round-robin over the replicas that answered ready. One that refuses or drops a
connection, or answers 503 (loading a model, shedding load), is set aside until its next good
probe, and the request is sent once more to another replica: predictions change nothing, so
sending one twice is safe. A timeout is not retried (the replica may still be working on it).
With no replica known to be ready, every address is tried, so a probe that lags never makes
the gateway refuse work a replica could do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from iris_gateway.metrics import GatewayMetrics
from iris_gateway.upstream import Upstream, UpstreamResponse, UpstreamUnavailable

logger = logging.getLogger(__name__)

# host, port -> the addresses it resolves to
Resolver = Callable[[str, int], Awaitable[list[str]]]

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0, connect=0.5)
RETRIED_STATUS = 503


async def resolve_all(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a scaled compose service has one per replica)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass
class Replica:
    upstream: Upstream
    ready: bool = False


def _base_url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


class PredictorReplicas:
    """The replicas behind the predictor setting, used like one `Upstream`."""

    def __init__(
        self,
        urls: list[str],
        session: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
        metrics: GatewayMetrics,
        *,
        refresh_s: float = 2.0,
        resolver: Resolver = resolve_all,
    ) -> None:
        self.urls = urls
        self.session = session
        self.timeout = timeout
        self.metrics = metrics
        self.refresh_s = refresh_s
        self.resolver = resolver
        self.replicas: dict[str, Replica] = {}
        self._turn = 0
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def refresh(self) -> None:
        """Resolve the names again, then ask every address whether it is ready."""
        found: list[str] = []
        for url in self.urls:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                addresses = await self.resolver(parts.hostname or "", port)
            except OSError as exc:
                logger.warning(
                    "Unable to resolve the predictor", extra={"url": url, "reason": str(exc)}
                )
                continue
            found += [_base_url(parts.scheme, address, port) for address in addresses]
        for gone in set(self.replicas) - set(found):
            del self.replicas[gone]
        for base_url in found:
            if base_url not in self.replicas:
                self.replicas[base_url] = Replica(self._upstream(base_url))
        await asyncio.gather(*(self._probe(replica) for replica in self.replicas.values()))

    def _upstream(self, base_url: str) -> Upstream:
        return Upstream("predictor", self.session, base_url, self.timeout, self.metrics)

    async def _probe(self, replica: Replica) -> None:
        try:
            url = f"{replica.upstream.base_url}/readyz"
            async with self.session.get(url, timeout=PROBE_TIMEOUT) as response:
                replica.ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            replica.ready = False

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:
                # The gateway must keep routing with what it knows whatever happens here.
                logger.exception("Unable to refresh the predictor replicas")

    def _candidates(self) -> list[Replica]:
        replicas = list(self.replicas.values())
        ready = [replica for replica in replicas if replica.ready] or replicas
        if not ready:
            return []
        self._turn = (self._turn + 1) % len(ready)
        return ready[self._turn :] + ready[: self._turn]

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        encoded: bool = False,
    ) -> UpstreamResponse:
        """Send one request to a ready replica; once more to another if it fails to answer."""
        candidates = self._candidates()
        if not candidates:
            raise self._unavailable()
        for attempt, replica in enumerate(candidates[:2]):
            last = attempt == len(candidates[:2]) - 1
            try:
                answer = await replica.upstream.request(
                    method, path, body=body, headers=headers, timeout=timeout, encoded=encoded
                )
            except UpstreamUnavailable:
                replica.ready = False
                if last:
                    raise
                continue
            if answer.status_code != RETRIED_STATUS or last:
                return answer
            replica.ready = False
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _unavailable(self) -> UpstreamUnavailable:
        return self._upstream(self.urls[0]).failed(
            UpstreamUnavailable, "no_replica", "No predictor replica could be found."
        )
