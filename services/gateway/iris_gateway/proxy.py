"""Requests the gateway passes to a predictor replica as they are, whatever the protocol.

Status code and body come back unchanged, with the few headers a protocol needs: the binary
tensor extension's `Inference-Header-Content-Length` (both ways), the content type, and the
predictor's `Iris-Request-ID` (the key under which feedback finds the answer). A request goes
to the path it arrived on, rebuilt from its decoded segments so that `..` or an encoded `/` in
a model name can never reach another of the predictor's paths.
"""

from __future__ import annotations

import functools
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from iris_gateway.state import GatewayState
from iris_gateway.upstream import UpstreamResponse

# Headers of the client's request the predictor needs to read the body as the client meant it.
_FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "content-encoding",
    "inference-header-content-length",
)


@functools.lru_cache(maxsize=1024)
def upstream_path(path: str) -> str:
    """`path` percent-encoded segment by segment; `.` and `..` encoded too, so that no proxy or
    server on the way resolves them."""
    return "/".join(
        "%2E" * len(segment) if segment in (".", "..") else quote(segment, safe="")
        for segment in path.split("/")
    )


def passed_response(state: GatewayState, upstream: UpstreamResponse) -> Response:
    """The predictor's answer as the gateway gives it back (5xx counted as upstream errors)."""
    if upstream.status_code >= 500:
        state.metrics.upstream_error("predictor", "status_5xx")
    return Response(
        content=upstream.content, status_code=upstream.status_code, headers=upstream.headers
    )


async def forward(
    request: Request, protocol: str, *, default_content_type: str | None = None
) -> Response:
    """Send `request` to a predictor replica on the same method and path; answer with its reply.

    `protocol` labels the gateway's count of predictions; requests that predict nothing (health,
    metadata) pass an empty label and are not counted there.
    """
    state: GatewayState = request.app.state.gateway
    headers = {
        name: value
        for name in _FORWARDED_REQUEST_HEADERS
        if (value := request.headers.get(name)) is not None
    }
    if default_content_type is not None:
        headers.setdefault("content-type", default_content_type)
    status = 500
    try:
        upstream = await state.predictor.request(
            request.method,
            # No protocol served here reads a query string: none is passed on.
            upstream_path(request.scope["path"]),
            body=await request.body() if request.method == "POST" else None,
            headers=headers,
            encoded=True,
        )
        status = upstream.status_code
    except Exception as exc:
        status = getattr(exc, "status_code", 500)
        raise
    finally:
        if protocol:
            state.metrics.prediction_request(protocol, status)
    return passed_response(state, upstream)
