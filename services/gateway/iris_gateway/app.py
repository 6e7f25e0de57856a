"""The iris-mlops gateway: one public entry point in front of the predictor and the trainer.

    POST /predict          proxied to the predictor (status code and body unchanged)
    POST /predict/batch    proxied to the predictor
    GET  /model            proxied to the predictor
    POST /retrain          queue a `trainer.retrain` Celery job (Bearer token) → 202 + Location
    GET  /jobs             recent retrain jobs, newest first
    GET  /jobs/{job_id}    one job's status, progress, result or error
    POST /promote          move a model's `production` alias in MLflow (Bearer token)
    GET  /healthz          the process is alive
    GET  /readyz           the predictor and Redis are reachable
    GET  /metrics          Prometheus metrics
    GET  /docs             OpenAPI documentation

Run: `uvicorn --factory iris_gateway.app:create_app --port 8002`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis.asyncio as redis
from celery import Celery
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from iris_gateway.config import GatewaySettings, get_settings
from iris_gateway.jobs import JobNotFound, JobStore, JobStoreUnavailable
from iris_gateway.metrics import GatewayMetrics, create_metrics, instrument
from iris_gateway.registry import ModelRegistry, RegistryError, UnknownModelVersion
from iris_gateway.routes import health, jobs, predict, promote
from iris_gateway.upstream import PredictorClient, UpstreamError, UpstreamTimeout
from iris_shared.http import RequestGuardMiddleware, error_response, install_error_handlers
from iris_shared.logging import configure_logging

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def create_celery(settings: GatewaySettings) -> Celery:
    """A Celery app used only to send tasks by name: no result backend, no trainer code.

    Without a backend, sending subscribes to nothing; job state is read from Redis directly
    (see iris_gateway.jobs). Short timeouts and few publish retries make a dead broker fail
    fast instead of holding the request.
    """
    celery = Celery("gateway", broker=settings.redis_url, set_as_current=False)
    timeout = settings.redis_timeout_s
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=timeout,
        broker_transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout},
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
    )
    return celery


def create_redis(settings: GatewaySettings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        # One retry at once: enough for a connection the server closed while idle, while a
        # dead Redis still answers 503 within about one timeout.
        retry=Retry(NoBackoff(), retries=1),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    connect = settings.connect_timeout_s
    http = httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections // 5 or 1,
        ),
        timeout=httpx.Timeout(settings.predictor_timeout_s, connect=connect),
    )
    redis_client = create_redis(settings)
    celery = create_celery(settings)
    app.state.predictor = PredictorClient(
        http, settings.predictor_url, httpx.Timeout(settings.predictor_timeout_s, connect=connect)
    )
    app.state.registry = ModelRegistry(
        http,
        settings.mlflow_tracking_uri,
        httpx.Timeout(settings.mlflow_timeout_s, connect=connect),
    )
    app.state.jobs = JobStore(redis_client, settings.job_ttl_s)
    app.state.celery = celery
    logger.info(
        "Gateway started",
        extra={"predictor_url": settings.predictor_url, "mlflow": settings.mlflow_tracking_uri},
    )
    try:
        yield
    finally:
        await http.aclose()
        await redis_client.aclose()
        celery.close()


def _install_domain_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    async def upstream_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UpstreamError)
        metrics.upstream_error(exc.upstream, exc.reason)
        logger.warning(
            "Upstream call failed",
            extra={"upstream": exc.upstream, "reason": exc.reason, "path": request.url.path},
        )
        if isinstance(exc, UpstreamTimeout):
            return error_response(504, "upstream_timeout", exc.message, {"upstream": exc.upstream})
        return error_response(502, "upstream_unavailable", exc.message, {"upstream": exc.upstream})

    async def job_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        metrics.upstream_error("redis", "unavailable")
        logger.warning("Redis unavailable", extra={"reason": str(exc), "path": request.url.path})
        return error_response(
            503,
            "jobs_unavailable",
            "Retrain jobs are unavailable right now (Redis cannot be reached); retry later.",
            headers={"Retry-After": "5"},
        )

    async def job_not_found(request: Request, exc: Exception) -> JSONResponse:
        return error_response(404, "job_not_found", f"No retrain job has the id '{exc}'.")

    async def unknown_version(request: Request, exc: Exception) -> JSONResponse:
        return error_response(404, "model_version_not_found", str(exc))

    async def registry_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RegistryError)
        metrics.upstream_error("mlflow", f"status_{exc.status_code}")
        logger.warning("MLflow refused a registry call", extra={"error_code": exc.error_code})
        return error_response(
            502,
            "registry_error",
            f"MLflow refused the request: {exc.message}",
            {"upstream": "mlflow", "error_code": exc.error_code},
        )

    app.add_exception_handler(UpstreamError, upstream_error)
    app.add_exception_handler(JobStoreUnavailable, job_store_unavailable)
    app.add_exception_handler(JobNotFound, job_not_found)
    app.add_exception_handler(UnknownModelVersion, unknown_version)
    app.add_exception_handler(RegistryError, registry_error)


def _summaries_from_docstrings(router: APIRouter) -> APIRouter:
    """Use each route's one-line docstring as its OpenAPI summary (FastAPI uses the name)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.summary is None and route.endpoint.__doc__:
            route.summary = route.endpoint.__doc__.strip().splitlines()[0]
    return router


def _openapi_with_passthrough_bodies(app: FastAPI) -> None:
    """Add the schemas of the bodies the proxy routes read raw to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _, definitions = models_json_schema(
                [(model, "validation") for model in predict.PASSTHROUGH_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(definitions.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging("gateway", settings.log_level)
    app = FastAPI(
        title="iris-mlops gateway",
        version=VERSION,
        description="Predictions, retrain jobs and promotions for the Iris classifier.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    metrics = create_metrics()
    app.state.metrics = metrics

    for module in (predict, jobs, promote, health):
        app.include_router(_summaries_from_docstrings(module.router))

    install_error_handlers(app)
    _install_domain_error_handlers(app, metrics)
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    # Added last, so outermost: refusals by the guard (413, 415) are counted too.
    instrument(app, metrics)
    _openapi_with_passthrough_bodies(app)
    return app
