"""The stack every HTTP service of the project is built on, so they all behave the same.

Error envelope and handlers, `ServiceMiddleware` (request ids, load shedding, body limits),
HTTP metrics and `GET /metrics`, the OpenAPI schemas of bodies that routes read themselves, and
a garbage collector that leaves start-up's objects alone (`freeze_long_lived_objects`), and the
API documentation pages without a CDN (`iris_shared.docs`).

    ServiceApp.__call__
    ├── PlainRoutes.match            plain routes (iris_shared.plain_routes) first
    └── ServiceMiddleware            every HTTP request: id, limits, HTTP metrics
        ├── a PlainRoute's endpoint  POST /predict, the protocol adapters: guards, endpoint
        └── FastAPI as usual         everything else: routing, dependencies, error handlers
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from iris_shared.docs import serve_docs
from iris_shared.http import (
    Receive,
    Scope,
    Send,
    ServiceMiddleware,
    document_json_bodies,
    install_error_handlers,
)
from iris_shared.metrics import ServiceMetrics
from iris_shared.plain_routes import PlainRoute, PlainRoutes
from iris_shared.server import freeze_long_lived_objects
from iris_shared.settings import HTTPServiceSettings

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class ServiceApp(FastAPI):
    """FastAPI behind `ServiceMiddleware`, with `PlainRoute`s served before FastAPI.

    A request whose method and path a plain route answers never reaches FastAPI: the app
    matches it first (so the middleware knows its template and the bodies it reads), and after
    the middleware runs the route's guards and endpoint; what they raise is answered by the
    app's own exception handlers, as for any FastAPI route. A plain path asked with another
    method is a 405. Every other request, lifespan included, goes through FastAPI unchanged.
    """

    service_middleware: ServiceMiddleware
    # Every route as its router declared it (with its template), for requests refused before
    # routing.
    declared_routes: list[BaseRoute]
    plain_routes: PlainRoutes

    def serve_with(
        self,
        settings: HTTPServiceSettings,
        metrics: ServiceMetrics,
        plain_routes: Iterable[PlainRoute] = (),
    ) -> None:
        self.plain_routes = PlainRoutes(plain_routes)
        self._refuse_shadowed_routes()
        self.service_middleware = ServiceMiddleware(
            self._dispatch,
            max_body_bytes=settings.max_body_bytes,
            max_concurrent_requests=settings.max_concurrent_requests,
            body_read_timeout_s=settings.body_read_timeout_s,
            observe=metrics.observe_request,
        )

    def _refuse_shadowed_routes(self) -> None:
        """A FastAPI route that a plain route hides would never run: refuse to build that app."""
        for plain in self.plain_routes.routes:
            # As declared: the app's own `routes` hides included routers' behind wrappers.
            for route in getattr(self, "declared_routes", self.routes):
                if isinstance(route, APIRoute) and route.path == plain.path:
                    hidden = (route.methods or set()) & (plain.methods or set())
                    if hidden:
                        raise ValueError(
                            f"{sorted(hidden)} {plain.path} is both a plain route and a FastAPI "
                            "route; the FastAPI one would never run."
                        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        if self.plain_routes:
            match, route, path_params = self.plain_routes.match(scope)
            if route is not None:
                # Before the middleware: it reads the route's template and media types.
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = path_params
                scope[_PLAIN] = match
        await self.service_middleware(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        plain = scope.get(_PLAIN)
        if plain is not None:
            await self._serve_plain(scope, receive, send, plain)
            return
        await super().__call__(scope, receive, send)

    async def _serve_plain(self, scope: Scope, receive: Receive, send: Send, match: Match) -> None:
        route: PlainRoute = scope["route"]
        request = Request(scope, receive, send)
        try:
            if match is not Match.FULL:
                allowed = ", ".join(sorted(route.methods or ()))
                raise StarletteHTTPException(405, headers={"Allow": allowed})
            response = await route.answer(request)
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


# The scope key under which the app tells its dispatch that a plain route matched.
_PLAIN = "iris.plain_route"


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
    plain_routes: Iterable[PlainRoute] = (),
    json_bodies: Iterable[type[BaseModel]] = (),
    lifespan: Any = None,
) -> ServiceApp:
    """The service's app: `routers` served by FastAPI, `plain_routes` before it (see
    `iris_shared.plain_routes`); both documented in one OpenAPI document."""
    app = ServiceApp(
        title=title,
        description=description,
        version=version,
        lifespan=_frozen_after_startup(lifespan),
        # Served by serve_docs, without a CDN.
        docs_url=None,
        redoc_url=None,
        # No OpenTelemetry here: without this FastAPI asks the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    routers = list(routers)
    for router in routers:
        app.include_router(router)
    metrics.install(app)
    serve_docs(app)
    plain_routes = list(plain_routes)
    app.declared_routes = [
        *plain_routes,
        *(route for router in routers for route in router.routes),
    ]
    install_error_handlers(app)
    app.serve_with(settings, metrics, plain_routes)
    document_json_bodies(app, json_bodies, [route.stub() for route in plain_routes])
    return app
