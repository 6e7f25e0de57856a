"""The iris-mlops gateway: one public entry point in front of the predictor and the trainer.

    POST /predict          proxied to the predictor (status code and body unchanged)
    POST /predict/batch    proxied to the predictor
    GET  /model            proxied to the predictor
    /v2/...                the Open Inference Protocol V2, proxied (routes/open_inference.py)
    POST /invocations      MLflow's scoring protocol, proxied, with GET /ping, /health and
                           /version (routes/mlflow_scoring.py)
    POST /retrain          queue a `trainer.retrain` Celery job (Bearer token) → 202 + Location
    GET  /jobs             recent retrain jobs, newest first (Bearer token)
    GET  /jobs/{job_id}    one job's status, progress, result or error (Bearer token)
    POST /promote          move a model's `production` alias in MLflow (Bearer token)
    POST /feedback         the true species of predicted flowers, by request id (Bearer token)
    GET  /healthz          the process is alive
    GET  /readyz           the predictor and Redis are reachable
    GET  /metrics          Prometheus metrics
    GET  /docs             OpenAPI documentation

Run it with `python -m iris_gateway` (one process per core, see iris_shared.server).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import redis.asyncio as redis
from celery import Celery
from fastapi import FastAPI
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from iris_gateway.config import GatewaySettings, get_settings
from iris_gateway.feedback import FeedbackStore
from iris_gateway.jobs import JobStore
from iris_gateway.metrics import GatewayMetrics
from iris_gateway.promotion import Promoter
from iris_gateway.replicas import PredictorReplicas
from iris_gateway.routes import (
    feedback,
    health,
    jobs,
    mlflow_scoring,
    open_inference,
    predict,
    promote,
)
from iris_gateway.state import GatewayState
from iris_gateway.upstream import Upstream
from iris_shared.feedback import FeedbackKeys
from iris_shared.jobs import JobKeys
from iris_shared.logging import configure_logging
from iris_shared.service import create_service_app
from iris_shared.settings import with_password

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def create_celery(settings: GatewaySettings) -> Celery:
    """A Celery app used only to send tasks by name: no result backend, no trainer code.

    The job records are the results (iris_gateway.jobs). Its broker keys carry the
    deployment's prefix, as the worker's do. Short timeouts make a dead broker fail fast
    instead of holding the request; the publish itself is never retried (see JobStore).
    """
    broker = with_password(settings.redis_url, settings.redis_password)
    celery = Celery("gateway", broker=broker, set_as_current=False)
    timeout = settings.redis_timeout_s
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_timeout=timeout,
        broker_transport_options={
            "global_keyprefix": JobKeys(settings.jobs_namespace).broker_prefix,
            "socket_connect_timeout": timeout,
            "socket_timeout": timeout,
        },
    )
    return celery


def create_redis(settings: GatewaySettings) -> redis.Redis:
    return redis.Redis.from_url(
        with_password(settings.redis_url, settings.redis_password),
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        # One retry at once: enough for a connection the server closed while idle, while a
        # dead Redis still answers 503 within about one timeout.
        retry=Retry(NoBackoff(), retries=1),
    )


def mlflow_auth(settings: GatewaySettings) -> aiohttp.BasicAuth | None:
    """MLflow's basic-auth credentials (compose), or None for an MLflow without auth."""
    password = settings.mlflow_tracking_password
    if settings.mlflow_tracking_username is None or password is None:
        return None
    return aiohttp.BasicAuth(settings.mlflow_tracking_username, password.get_secret_value())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: GatewaySettings = app.state.settings
    metrics: GatewayMetrics = app.state.metrics
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.max_connections, limit_per_host=0),
        # The proxy passes bodies through as they are.
        auto_decompress=False,
    )
    connect = settings.connect_timeout_s
    redis_client = create_redis(settings)
    celery = create_celery(settings)
    predictor = PredictorReplicas(
        settings.predictor_urls,
        session,
        aiohttp.ClientTimeout(total=settings.predictor_timeout_s, connect=connect),
        metrics,
        refresh_s=settings.predictor_refresh_s,
    )
    await predictor.start()
    app.state.gateway = GatewayState(
        settings=settings,
        metrics=metrics,
        predictor=predictor,
        promoter=Promoter(
            Upstream(
                "mlflow",
                session,
                settings.mlflow_tracking_uri,
                aiohttp.ClientTimeout(total=settings.mlflow_timeout_s, connect=connect),
                metrics,
                auth=mlflow_auth(settings),
            ),
            redis_client,
            lock_name=f"{settings.jobs_namespace}:promotion-lock",
        ),
        jobs=JobStore(
            redis_client,
            celery,
            JobKeys(settings.jobs_namespace),
            ttl_s=settings.job_ttl_s,
            max_pending=settings.retrain_max_pending,
            retry_after_s=settings.retrain_retry_after_s,
            metrics=metrics,
        ),
        feedback=FeedbackStore(
            redis_client,
            FeedbackKeys(settings.jobs_namespace),
            window_s=settings.feedback_window_s,
            accuracy_window=settings.live_accuracy_window,
            max_labelled_rows=settings.max_labelled_rows,
            metrics=metrics,
        ),
    )
    logger.info(
        "Gateway started",
        extra={
            "predictor_url": settings.predictor_url,
            "mlflow": settings.mlflow_tracking_uri,
            "jobs_namespace": settings.jobs_namespace,
        },
    )
    try:
        yield
    finally:
        await predictor.stop()
        await session.close()
        await redis_client.aclose()
        celery.close()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging("gateway", settings.log_level)
    metrics = GatewayMetrics()
    app = create_service_app(
        title="iris-mlops gateway",
        description="Predictions, retrain jobs and promotions for the Iris classifier.",
        version=VERSION,
        settings=settings,
        metrics=metrics,
        routers=[jobs.router, promote.router, feedback.router, health.router],
        # Every protocol's prediction paths: plain routes, proxied as they are (iris_gateway.proxy).
        plain_routes=[*predict.ROUTES, *open_inference.ROUTES, *mlflow_scoring.ROUTES],
        json_bodies=[*predict.JSON_BODIES, *feedback.JSON_BODIES],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    return app
