"""The HTTP side of the contract: one error envelope, one way to raise errors, one middleware.

Every error a client can see, validation errors included, has the shape of `ErrorResponse`:

    {"error": "validation_error", "message": "...", "detail": [{"field": ..., "problem": ...}]}

`error` is a stable machine-readable code, `message` a sentence for people, `detail` optional.

Errors a service raises on purpose are `ServiceError`s: each subclass carries its status code
and error code, and one handler turns any of them into the envelope.

    ServiceError                     status_code / error set by each subclass
    ├── Overloaded                   503 overloaded (with Retry-After)
    └── ... each service's own (ModelNotReady, JobNotFound, UpstreamError, ...)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from typing import Any, ClassVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic_core import from_json
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from iris_shared.logging import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes must keep answering while a server sheds load.
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class FieldProblem(BaseModel):
    field: str
    problem: str


class ErrorResponse(BaseModel):
    error: str
    message: str
    detail: list[FieldProblem] | dict[str, Any] | None = None


class ServiceError(Exception):
    """An error meant for the client; subclasses set `status_code` and `error`, and
    `retry_after_s` when the client may try again later (the answer's Retry-After)."""

    status_code: ClassVar[int] = 500
    error: ClassVar[str] = "internal_error"
    retry_after_s: int | None = None

    def __init__(
        self,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
        *,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        if self.retry_after_s is not None:
            self.headers["Retry-After"] = str(self.retry_after_s)


class Overloaded(ServiceError):
    """More requests are in flight than the server takes; the client should retry soon."""

    status_code = 503
    error = "overloaded"
    retry_after_s = 1


def error_response(
    status_code: int,
    error: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=error, message=message, detail=detail)
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=status_code, headers=headers
    )


def error_responses(*errors: int | type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the envelope, from the errors a route raises:
    an exception class gives its status, its `error` code and first docstring line as the
    description (several classes of one status are listed together), and a Retry-After header
    when it sets `retry_after_s`; a bare status code documents only the envelope."""
    documented: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        if isinstance(error, int):
            documented.setdefault(error, {"model": ErrorResponse})
            continue
        entry = documented.setdefault(error.status_code, {"model": ErrorResponse})
        summary = " ".join((error.__doc__ or "").strip().split("\n\n")[0].split())
        line = f"`{error.error}`: {summary}" if summary else f"`{error.error}`"
        # Markdown: one paragraph per error.
        entry["description"] = "\n\n".join(filter(None, [entry.get("description"), line]))
        if error.retry_after_s is not None:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "string"},
                }
            }
    return documented


def _field_name(loc: Iterable[Any]) -> str:
    parts = [str(part) for part in loc if part != "body"]
    return ".".join(parts) or "body"


def _problem(error: dict[str, Any]) -> FieldProblem:
    kind = error.get("type", "")
    loc = error.get("loc", ())
    if kind == "missing":
        problem = "is required"
    elif kind == "extra_forbidden":
        problem = "is not allowed (unknown field)"
    elif kind == "json_invalid":
        problem = f"is not valid JSON: {error.get('ctx', {}).get('error', 'parse error')}"
        # FastAPI puts the parser's offset after "body"; the message has line and column.
        loc = ("body",)
    else:
        problem = str(error.get("msg", "is invalid"))
    return FieldProblem(field=_field_name(loc), problem=problem)


def loads_json(body: bytes) -> Any:
    """The JSON document `body` holds, parsed as pydantic parses the bodies it validates.

    Raises `json.JSONDecodeError` (FastAPI's cue for a `json_invalid` error, answered as 400
    `malformed_json`) for anything that is not a JSON document in UTF-8 (RFC 8259 8.1): bytes
    that are not UTF-8, a lone surrogate escape, nesting deeper than the parser's limit.
    `json.loads` would take UTF-16 and UTF-32 and lone surrogates, and raise
    UnicodeDecodeError or RecursionError, which become a 500 or another error code.
    """
    try:
        return from_json(body)
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), "", 0) from None


def validation_error_response(errors: Iterable[dict[str, Any]]) -> JSONResponse:
    """The 400 for pydantic errors, whether FastAPI or a route's own validation found them."""
    problems = [_problem(err) for err in errors]
    if any(p.problem.startswith("is not valid JSON") for p in problems):
        return error_response(
            400, "malformed_json", "The request body is not valid JSON.", problems
        )
    summary = "; ".join(f"{p.field} {p.problem}" for p in problems[:10])
    return error_response(400, "validation_error", f"Invalid request: {summary}.", problems)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors())


_HTTP_ERROR_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _service_error_response(exc)


def _service_error_response(exc: ServiceError) -> JSONResponse:
    return error_response(exc.status_code, exc.error, exc.message, exc.detail, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error while serving request")
    return error_response(500, "internal_error", "An unexpected error occurred.")


def install_error_handlers(app: Any) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(Exception, _unexpected_error)


class JSONBodyRequest(Request):
    """A request whose JSON body is parsed by `loads_json`, as every other body is."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_json(await self.body())
        return self._json


class DocstringRoute(APIRoute):
    """Use the endpoint's one-sentence docstring as its OpenAPI summary; parse a JSON body
    with `loads_json`, so that FastAPI refuses what the routes that parse their own refuse."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        doc = inspect.getdoc(endpoint)
        if kwargs.get("summary") is None and doc:
            kwargs["summary"] = doc.splitlines()[0]
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def with_json_body(request: Request) -> Response:
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return with_json_body


# handler (route template, or "none"), method, status code, seconds
RequestObserver = Callable[[str, str, int, float], None]


class ServiceMiddleware:
    """Per request: an id, a cap on requests in flight, refusal of bodies nobody should parse,
    and the HTTP metrics.

    - `X-Request-ID`: the client's when it is safe to log, else a new one; echoed in the
      response, set in the logging context and in `scope["state"]["request_id"]`. A client's
      id traces the request; `server_request_id` gives routes an id the client cannot choose.
    - At most `max_concurrent_requests` requests in flight in this process: beyond it the
      answer is an immediate 503 `overloaded` with `Retry-After`, so overload is shed in
      microseconds instead of growing a queue (health, readiness and metrics are exempt).
    - Bodies larger than `max_body_bytes` get 413 (announced or streamed), bodies that are not
      JSON get 415, before the app reads a byte of them.
    - A body is read whole before the request counts as in flight, and must arrive within
      `body_read_timeout_s` (else 408, and the connection is closed): clients trickling bodies
      hold a connection each, never a slot that ordinary requests need.
    - `observe` gets each request's route template, method, status and duration, refusals
      included. The template is the one Starlette's router records in `scope["route"]`, so no
      route is matched twice (prometheus-fastapi-instrumentator matches every route again per
      request).

    Pure ASGI (not BaseHTTPMiddleware): no extra task or body copy per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_concurrent_requests: int,
        body_read_timeout_s: float = 10.0,
        observe: RequestObserver | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrent_requests = max_concurrent_requests
        self.body_read_timeout_s = body_read_timeout_s
        self.observe = observe
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = length = media_type = None
        streamed = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
            elif name == b"content-length":
                length = value
            elif name == b"content-type":
                media_type = value
            elif name == b"transfer-encoding":
                streamed = True
        if incoming is not None and _SAFE_REQUEST_ID.match(incoming):
            request_id, from_client = incoming.decode("ascii"), True
        else:
            request_id, from_client = new_request_id(), False
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["request_id_from_client"] = from_client
        id_header = (b"x-request-id", request_id.encode("ascii"))
        started = time.perf_counter()
        # What the client gets if the app fails before answering (ServerErrorMiddleware's 500).
        status = 500
        answering = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answering
            if message["type"] == "http.response.start":
                status = message["status"]
                answering = True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        token = request_id_var.set(request_id)
        try:
            refusal = self._refusal(scope, length, media_type, streamed)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
                return
            if streamed or (length is not None and length != b"0"):
                try:
                    receive = await self._read_body(receive)
                except (BodyTooLarge, BodyTimeout) as exc:
                    await _service_error_response(exc)(scope, receive, send_with_id)
                    return
                except ClientDisconnected:
                    return
            if self.in_flight >= self.max_concurrent_requests and (
                scope["path"] not in UNLIMITED_PATHS
            ):
                await self._overloaded()(scope, receive, send_with_id)
                return
            self.in_flight += 1
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                # Starlette re-raises what it answered with a 500 so that the server logs it;
                # the 500 handler has logged it already, and uvicorn would drop the connection.
                if not (answering and status == 500):
                    raise
            finally:
                self.in_flight -= 1
        finally:
            request_id_var.reset(token)
            if self.observe is not None:
                self.observe(
                    _handler(scope), scope["method"], status, time.perf_counter() - started
                )

    def _too_large(self) -> JSONResponse:
        return _service_error_response(BodyTooLarge(self.max_body_bytes))

    def _overloaded(self) -> JSONResponse:
        return _service_error_response(
            Overloaded(
                f"The server is at its limit of {self.max_concurrent_requests} requests in "
                "flight; retry in a moment."
            )
        )

    def _refusal(
        self, scope: Scope, length: bytes | None, media_type: bytes | None, streamed: bool
    ) -> JSONResponse | None:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        # A length too long to be a number we could accept is refused without parsing it.
        if (
            length is not None
            and length.isdigit()
            and (len(length) > 18 or int(length) > self.max_body_bytes)
        ):
            return self._too_large()
        if not streamed and (length is None or length == b"0"):
            return None
        kind = (media_type or b"").split(b";", 1)[0].strip().lower()
        # A plain route (iris_shared.plain_routes) says which bodies it reads; all others JSON.
        accepts = getattr(scope.get("route"), "accepts", None)
        if accepts is not None:
            if accepts(kind):
                return None
        elif kind == b"application/json" or kind.endswith(b"+json"):
            return None
        return error_response(
            415,
            "unsupported_media_type",
            "Send the body as JSON with 'Content-Type: application/json'.",
        )

    async def _read_body(self, receive: Receive) -> Receive:
        """Read the whole body in time, then give it to the app as one message."""
        chunks: list[bytes] = []
        received = 0
        try:
            async with asyncio.timeout(self.body_read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnected
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > self.max_body_bytes:
                        raise BodyTooLarge(self.max_body_bytes)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise BodyTimeout(self.body_read_timeout_s) from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


class ClientDisconnected(Exception):
    """The client went away before its body arrived: there is nobody to answer."""


class BodyTimeout(ServiceError):
    """The body did not arrive in time; the connection is closed."""

    status_code = 408
    error = "request_timeout"

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"The request body did not arrive within {timeout_s:g} s.",
            headers={"Connection": "close"},
        )


class BodyTooLarge(ServiceError):
    """A streamed body grew beyond the limit while it was read."""

    status_code = 413
    error = "payload_too_large"

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(f"The request body is larger than {max_body_bytes} bytes.")


def new_request_id() -> str:
    """A request id nobody can guess: 128 bits from the OS's random source, as 32 hex digits.

    Ids that name stored data (the answers feedback joins) must not be guessable, so they are
    never a counter or derived from anything a client can see.
    """
    return os.urandom(16).hex()


def server_request_id(scope: Scope) -> str:
    """The request's id if the server made it, else a new one: a client's `X-Request-ID` is
    for tracing only, never a key under which the server stores anything."""
    state = scope["state"]
    return new_request_id() if state["request_id_from_client"] else state["request_id"]


def _handler(scope: Scope) -> str:
    """The route template of the request: recorded by the router, or matched for a request
    refused before routing; "none" when no route matches."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        # The routes as declared: the app's own `routes` hides included routers' behind
        # FastAPI's wrappers, which match without a template.
        for candidate in getattr(app, "declared_routes", ()):
            if candidate.matches(scope)[0] != Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or "none"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself (a plain route, a proxy).

    The schema is referenced by name; `document_json_bodies` adds it to the components.
    """
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def document_json_bodies(
    app: Any, models: Iterable[type[BaseModel]], stubs: Iterable[Any] = ()
) -> None:
    """Add the schemas `json_body` refers to, which FastAPI cannot see, to the app's OpenAPI,
    the routes `stubs` document (plain routes, which FastAPI does not serve), and the answers
    `ServiceMiddleware` gives before any route runs (`document_refusals`)."""
    stubs = list(stubs)
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*stubs, *app.routes],
            )
            documented: list[type[BaseModel]] = [*models, ErrorResponse]
            _, definitions = models_json_schema(
                [(model, "validation") for model in documented],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.get("$defs", {}))
            document_refusals(schema)
            app.openapi_schema = schema
        return app.openapi_schema  # type: ignore[no-any-return]

    app.openapi = openapi


# What ServiceMiddleware answers on its own, by the operations it can answer it for.
_BODY_REFUSALS = {
    BodyTimeout.status_code: f"The body did not arrive in time (`{BodyTimeout.error}`).",
    BodyTooLarge.status_code: f"The body is larger than the server takes (`{BodyTooLarge.error}`).",
    415: "The body is not sent as JSON (`unsupported_media_type`).",
}
_OVERLOAD = f"Too many requests are in flight (`{Overloaded.error}`); retry after Retry-After."


def document_refusals(schema: dict[str, Any]) -> None:
    """Document, on each operation of an OpenAPI `schema`, the refusals `ServiceMiddleware`
    can give it: 408, 413 and 415 where there is a request body, 503 except on the paths
    exempt from the in-flight cap. A status the route documents keeps its description."""
    envelope = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            refusals = dict(_BODY_REFUSALS) if "requestBody" in operation else {}
            if path not in UNLIMITED_PATHS:
                refusals[Overloaded.status_code] = _OVERLOAD
            responses = operation.setdefault("responses", {})
            for status, description in refusals.items():
                documented = responses.setdefault(str(status), {"description": description})
                documented.setdefault("content", envelope)
