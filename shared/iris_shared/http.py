"""The HTTP side of the contract: one error envelope and the middleware both FastAPI services use.

Every error a client can see, validation errors included, has the shape of `ErrorResponse`:

    {"error": "validation_error", "message": "...", "detail": [{"field": ..., "problem": ...}]}

`error` is a stable machine-readable code, `message` a sentence for people, `detail` optional.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from iris_shared.logging import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

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


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the envelope for the given status codes."""
    return {code: {"model": ErrorResponse} for code in status_codes}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body",)]
    return ".".join(parts) or "body"


def _problem(error: dict[str, Any]) -> FieldProblem:
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    if kind == "missing":
        problem = "is required"
    elif kind == "extra_forbidden":
        problem = "is not allowed (unknown field)"
    elif kind == "json_invalid":
        problem = f"is not valid JSON: {error.get('ctx', {}).get('error', 'parse error')}"
    else:
        problem = str(error.get("msg", "is invalid"))
    return FieldProblem(field=_field_name(loc), problem=problem)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [_problem(err) for err in exc.errors()]
    if any(p.problem.startswith("is not valid JSON") for p in problems):
        return error_response(
            400, "malformed_json", "The request body is not valid JSON.", problems
        )
    summary = "; ".join(f"{p.field} {p.problem}" for p in problems[:10])
    return error_response(400, "validation_error", f"Invalid request: {summary}.", problems)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {
        404: "not_found",
        405: "method_not_allowed",
        401: "unauthorized",
        413: "payload_too_large",
        415: "unsupported_media_type",
    }.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error while serving request")
    return error_response(500, "internal_error", "An unexpected error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


class RequestGuardMiddleware:
    """Give each request an id and refuse oversized or non-JSON bodies before any parsing.

    A pure ASGI middleware (not BaseHTTPMiddleware) so it adds no task or copy per request
    and can stop reading a body as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get(REQUEST_ID_HEADER.lower(), "")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            rejection = self._reject(scope, headers)
            if rejection is not None:
                await rejection(scope, receive, send_with_id)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except _BodyTooLarge:
            await self._too_large()(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    def _too_large(self) -> JSONResponse:
        return error_response(
            413,
            "payload_too_large",
            f"The request body is larger than {self.max_body_bytes} bytes.",
        )

    def _reject(self, scope: Scope, headers: dict[str, str]) -> JSONResponse | None:
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and not (media_type == "application/json" or media_type.endswith("+json")):
            return error_response(
                415,
                "unsupported_media_type",
                "Send the body as JSON with 'Content-Type: application/json'.",
            )
        return None

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        return limited_receive


class _BodyTooLarge(Exception):
    pass
