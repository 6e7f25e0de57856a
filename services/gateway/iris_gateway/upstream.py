"""Calls to the services behind the gateway, and the errors they raise.

    UpstreamError                 the upstream could not give an answer (routes map it to 5xx)
    ├── UpstreamUnavailable       connection refused or dropped → 502 (503 for the job store)
    └── UpstreamTimeout           no answer in time              → 504

An upstream that *does* answer, even with 4xx/5xx, is not an error here: its status code and
body are passed through unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from iris_shared.http import REQUEST_ID_HEADER
from iris_shared.logging import request_id_var

logger = logging.getLogger(__name__)


class UpstreamError(Exception):
    def __init__(self, upstream: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.upstream = upstream
        self.reason = reason
        self.message = message


class UpstreamUnavailable(UpstreamError):
    """The upstream refused or dropped the connection."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


# Headers of the upstream's answer worth keeping; the rest (hop-by-hop, its own request id,
# content-length) is the gateway's to set.
_PASSED_RESPONSE_HEADERS = ("content-type", "retry-after", "cache-control")


@dataclass(frozen=True)
class UpstreamResponse:
    status_code: int
    content: bytes
    headers: dict[str, str]


def request_id_headers() -> dict[str, str]:
    request_id = request_id_var.get()
    return {REQUEST_ID_HEADER: request_id} if request_id else {}


async def send(
    client: httpx.AsyncClient,
    upstream: str,
    method: str,
    url: str,
    *,
    timeout: httpx.Timeout,
    content: bytes | None = None,
    json: object = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send one request, turning transport failures into `UpstreamError`s."""
    try:
        return await client.request(
            method,
            url,
            content=content,
            json=json,
            params=params,
            headers={**request_id_headers(), **(headers or {})},
            timeout=timeout,
        )
    except httpx.TimeoutException as exc:
        kind = "connect_timeout" if isinstance(exc, httpx.ConnectTimeout) else "timeout"
        raise UpstreamTimeout(upstream, kind, f"The {upstream} did not answer in time.") from exc
    except httpx.TransportError as exc:
        reason = "connect" if isinstance(exc, httpx.ConnectError) else "transport"
        raise UpstreamUnavailable(
            upstream, reason, f"The {upstream} is unreachable ({type(exc).__name__})."
        ) from exc


class PredictorClient:
    """Forwards prediction requests to the predictor through the gateway's pooled client."""

    upstream = "predictor"

    def __init__(self, client: httpx.AsyncClient, base_url: str, timeout: httpx.Timeout) -> None:
        self.client = client
        self.base_url = base_url
        self.timeout = timeout

    async def forward(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> UpstreamResponse:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        response = await send(
            self.client,
            self.upstream,
            method,
            f"{self.base_url}{path}",
            timeout=self.timeout,
            content=body,
            headers=headers,
        )
        kept = {k: v for k, v in response.headers.items() if k.lower() in _PASSED_RESPONSE_HEADERS}
        return UpstreamResponse(response.status_code, response.content, kept)

    async def ready(self, timeout: httpx.Timeout) -> bool:
        response = await send(
            self.client, self.upstream, "GET", f"{self.base_url}/readyz", timeout=timeout
        )
        return response.status_code == 200
