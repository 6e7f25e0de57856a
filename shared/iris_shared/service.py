"""The stack every HTTP service of the project is built on, so they all behave the same.

Error envelope and handlers, `ServiceMiddleware` (request ids, load shedding, body limits),
HTTP metrics and `GET /metrics`, the OpenAPI schemas of bodies that routes read themselves, and
a garbage collector that leaves start-up's objects alone (`freeze_long_lived_objects`).

    ServiceApp.__call__
    └── ServiceMiddleware            every HTTP request: id, limits, HTTP metrics
        ├── a RawRoute's endpoint    POST /predict and friends: straight to the endpoint
        └── FastAPI as usual         everything else: routing, dependencies, error handlers
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response
from starlette.routing import BaseRoute

from iris_shared.http import (
    RawRoute,
    Receive,
    Scope,
    Send,
    ServiceMiddleware,
    document_json_bodies,
    install_error_handlers,
)
from iris_shared.metrics import ServiceMetrics
from iris_shared.server import freeze_long_lived_objects
from iris_shared.settings import HTTPServiceSettings

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class ServiceApp(FastAPI):
    """FastAPI behind `ServiceMiddleware`, serving `RawRoute`s without the router.

    On the prediction path, FastAPI's router and its middleware layers (route matching against
    every route, the exception-handling wrappers around each send) cost as much as the model.
    The first request for a `RawRoute` goes through the router as usual, and the route tells the
    app the exact method and path it answered (`learn_raw_route`); from then on such requests go
    from the middleware straight to the endpoint, and what it raises is answered by the app's
    own exception handlers, so the client sees exactly what the router would give. Every other
    request, lifespan included, goes through FastAPI unchanged.
    """

    service_middleware: ServiceMiddleware
    # Every route as its router declared it (with its template), for requests refused before
    # routing.
    declared_routes: list[BaseRoute]

    def serve_with(self, settings: HTTPServiceSettings, metrics: ServiceMetrics) -> None:
        self.service_middleware = ServiceMiddleware(
            self._dispatch,
            max_body_bytes=settings.max_body_bytes,
            max_concurrent_requests=settings.max_concurrent_requests,
            body_read_timeout_s=settings.body_read_timeout_s,
            observe=metrics.observe_request,
        )
        # (method, path) -> what the router put in scope["route"], and the route.
        self._raw_routes: dict[tuple[str, str], tuple[Any, RawRoute]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.service_middleware(scope, receive, send)

    def learn_raw_route(self, scope: Scope, route: RawRoute) -> None:
        """`route` answered this request; serve its method and path without routing from now on."""
        if not route.param_convertors and not scope.get("root_path"):
            self._raw_routes[(scope["method"], scope["path"])] = (scope.get("route", route), route)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        learned = self._raw_routes.get((scope["method"], scope["path"]))
        if learned is None or scope.get("root_path"):
            await super().__call__(scope, receive, send)
            return
        scope["route"], route = learned
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except Exception as exc:
            response = await self._handler_for(exc)(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> ExceptionHandler:
        # The handler of the closest class in the exception's MRO, as Starlette picks it.
        for kind in type(exc).__mro__:
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                return handler  # type: ignore[return-value]
        raise exc


def _frozen_after_startup(lifespan: Any) -> Any:
    """The service's lifespan, then `freeze_long_lived_objects` before the first request."""

    @asynccontextmanager
    async def frozen(app: FastAPI) -> AsyncIterator[Any]:
        async with lifespan(app) if lifespan is not None else nullcontext() as state:
            freeze_long_lived_objects()
            yield state

    return frozen


def create_service_app(
    *,
    title: str,
    description: str,
    version: str,
    settings: HTTPServiceSettings,
    metrics: ServiceMetrics,
    routers: Iterable[APIRouter],
    json_bodies: Iterable[type[BaseModel]] = (),
    lifespan: Any = None,
) -> ServiceApp:
    app = ServiceApp(
        title=title,
        description=description,
        version=version,
        lifespan=_frozen_after_startup(lifespan),
        # No OpenTelemetry here: without this FastAPI asks the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    routers = list(routers)
    for router in routers:
        app.include_router(router)
    metrics.install(app)
    app.declared_routes = [route for router in routers for route in router.routes]
    install_error_handlers(app)
    app.serve_with(settings, metrics)
    document_json_bodies(app, json_bodies)
    return app
