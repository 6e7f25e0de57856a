"""The stack every HTTP service of the project is built on, so they all behave the same.

Error envelope and handlers, `ServiceMiddleware` (request ids, load shedding, body limits),
HTTP metrics and `GET /metrics`, and the OpenAPI schemas of bodies that routes read themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from iris_shared.http import ServiceMiddleware, document_json_bodies, install_error_handlers
from iris_shared.metrics import ServiceMetrics
from iris_shared.settings import HTTPServiceSettings


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
) -> FastAPI:
    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        # No OpenTelemetry here: without this FastAPI asks the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for router in routers:
        app.include_router(router)
    metrics.install(app)
    install_error_handlers(app)
    app.add_middleware(
        ServiceMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_concurrent_requests=settings.max_concurrent_requests,
        observe=metrics.observe_request,
    )
    document_json_bodies(app, json_bodies)
    return app
