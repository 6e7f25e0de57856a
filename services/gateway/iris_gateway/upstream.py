"""Calls to the services behind the gateway, and the errors they raise.

    UpstreamError (ServiceError)      the upstream could not give an answer
    ├── UpstreamUnavailable           connection refused or dropped → 502 upstream_unavailable
    └── UpstreamTimeout               no answer in time              → 504 upstream_timeout

An upstream that *does* answer, even with 4xx/5xx, is not an error here: its status code and
body are passed through unchanged.

aiohttp, not httpx: under concurrent load httpx's connection pool serialises requests
(encode/httpx#3215), so a pass-through gateway on it queues behind its own pool.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from iris_gateway.metrics import GatewayMetrics
from iris_shared.http import REQUEST_ID_HEADER, ServiceError
from iris_shared.logging import request_id_var

logger = logging.getLogger(__name__)


class UpstreamError(ServiceError):
    def __init__(self, upstream: str, reason: str, message: str) -> None:
        super().__init__(message, detail={"upstream": upstream})
        self.upstream = upstream
        self.reason = reason


class UpstreamUnavailable(UpstreamError):
    """The upstream refused or dropped the connection."""

    status_code = 502
    error = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    status_code = 504
    error = "upstream_timeout"


# Headers of the upstream's answer worth keeping; the rest (hop-by-hop, its own request id,
# content-length) is the gateway's to set.
_PASSED_RESPONSE_HEADERS = (
    "Content-Type",
    "Retry-After",
    "Cache-Control",
    # The binary tensor extension of the Open Inference Protocol: where the JSON part ends.
    "Inference-Header-Content-Length",
    # The predictor's own id of an answer, under which POST /feedback finds it.
    "Iris-Request-ID",
)


_NO_CONTENT_TYPE = frozenset({"Content-Type"})


ErrorT = TypeVar("ErrorT", bound=UpstreamError)


@dataclass(frozen=True)
class UpstreamResponse:
    status_code: int
    content: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.content)
        except ValueError:
            return None


# aiohttp parses the URL of every request; the prediction paths are few, so each is parsed once.
_url = functools.lru_cache(maxsize=256)(URL)


@functools.lru_cache(maxsize=1024)
def _encoded_url(url: str) -> URL:
    return URL(url, encoded=True)


class Upstream:
    """One service behind the gateway, reached through the gateway's pooled session."""

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        base_url: str,
        timeout: aiohttp.ClientTimeout,
        metrics: GatewayMetrics,
        auth: aiohttp.BasicAuth | None = None,
    ) -> None:
        self.name = name
        self.session = session
        self.base_url = base_url
        self.timeout = timeout
        self.metrics = metrics
        self.auth = auth

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: object = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        encoded: bool = False,
    ) -> UpstreamResponse:
        """Send one request; transport failures become `UpstreamError`s (and are counted).

        `encoded`: `path` is percent-encoded already and is sent exactly as it is (yarl would
        otherwise decode it and resolve `..`). A `body` without a content type goes without
        one, as the client sent it (aiohttp would call it application/octet-stream).
        """
        sent_headers = dict(headers or {})
        request_id = request_id_var.get()
        if request_id:
            sent_headers[REQUEST_ID_HEADER] = request_id
        try:
            async with self.session.request(
                method,
                (_encoded_url if encoded else _url)(f"{self.base_url}{path}"),
                data=body,
                json=json_body,
                params=params,
                headers=sent_headers,
                auth=self.auth,
                timeout=timeout or self.timeout,
                skip_auto_headers=_NO_CONTENT_TYPE if body is not None else None,
            ) as response:
                content = await response.read()
                kept = {
                    name: response.headers[name]
                    for name in _PASSED_RESPONSE_HEADERS
                    if name in response.headers
                }
                return UpstreamResponse(response.status, content, kept)
        except TimeoutError as exc:
            kind = (
                "connect_timeout" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "timeout"
            )
            raise self.failed(
                UpstreamTimeout, kind, f"The {self.name} did not answer in time."
            ) from exc
        except aiohttp.ClientError as exc:
            kind = "connect" if isinstance(exc, aiohttp.ClientConnectorError) else "transport"
            raise self.failed(
                UpstreamUnavailable,
                kind,
                f"The {self.name} is unreachable ({type(exc).__name__}).",
            ) from exc

    def failed(self, kind: type[ErrorT], reason: str, message: str) -> ErrorT:
        """The error to raise for a failed call, counted and logged."""
        self.metrics.upstream_error(self.name, reason)
        logger.warning("Upstream call failed", extra={"upstream": self.name, "reason": reason})
        return kind(self.name, reason, message)
