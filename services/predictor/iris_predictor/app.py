"""The predictor: serves `models:/<name>@<alias>` from MLflow and follows the alias without restart.

Endpoints:

    POST /predict            one flower -> species, probabilities, model version
    POST /predict/batch      {"instances": [...]} -> predictions in input order
    GET  /model              the served model: name, version, alias, run, metrics, source
    GET  /healthz            200 while the process is alive
    GET  /readyz             200 once a model is loaded, 503 before
    GET  /metrics            Prometheus metrics
    POST /webhooks/mlflow    MLflow webhook receiver (only when PREDICTOR_WEBHOOK_SECRET is set)

Run it with `uvicorn --factory iris_predictor.app:create_app --port 8001`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_fastapi_instrumentator import Instrumentator

from iris_predictor.config import PredictorSettings, get_settings
from iris_predictor.metrics import HTTP_LATENCY_BUCKETS, PredictorMetrics
from iris_predictor.prediction_log import PredictionLog
from iris_predictor.registry import ModelRegistry
from iris_predictor.routes import health, model, predict, webhooks
from iris_predictor.serving import LoadedModel, ModelHolder, ModelNotReadyError
from iris_predictor.state import PredictorState
from iris_predictor.watcher import ModelWatcher
from iris_shared.http import RequestGuardMiddleware, error_response, install_error_handlers
from iris_shared.logging import configure_logging

ModelSource = LoadedModel | ModelRegistry


async def _model_not_ready(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModelNotReadyError)
    return error_response(503, "model_not_ready", str(exc), headers={"Retry-After": "5"})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: PredictorState = app.state.predictor
    state.prediction_log.start()
    if state.watcher is not None:
        # The first load happens in the watcher's thread: /healthz answers at once and
        # /readyz turns 200 when the model is in.
        state.watcher.start()
    try:
        yield
    finally:
        if state.watcher is not None:
            state.watcher.stop()
        state.prediction_log.stop()


def create_app(
    settings: PredictorSettings | None = None, model_source: ModelSource | None = None
) -> FastAPI:
    """Build the app. `model_source`: an already-loaded model to serve as is (no registry), or
    a `ModelRegistry` to follow; by default the registry the settings describe."""
    settings = settings or get_settings()
    configure_logging("predictor", settings.log_level)

    metrics = PredictorMetrics()
    watcher: ModelWatcher | None = None
    if isinstance(model_source, LoadedModel):
        holder = ModelHolder(model_source.info.name, model_source.info.alias, model_source)
        metrics.model_served(model_source.info.name, model_source.version, model_source.info.alias)
    else:
        registry = model_source or ModelRegistry(
            tracking_uri=settings.mlflow_tracking_uri,
            name=settings.model_name,
            alias=settings.model_alias,
            cache_dir=settings.cache_dir,
            probe_timeout_s=settings.mlflow_probe_timeout_s,
        )
        holder = ModelHolder(registry.name, registry.alias)
        watcher = ModelWatcher(registry, holder, metrics, settings.poll_interval_s)

    app = FastAPI(
        title="iris-mlops predictor",
        version="0.1.0",
        description=(__doc__ or "").split("\n\n")[0],
        lifespan=lifespan,
    )
    app.state.predictor = PredictorState(
        settings=settings,
        holder=holder,
        metrics=metrics,
        prediction_log=PredictionLog(
            settings.prediction_log_dir,
            max_bytes=settings.prediction_log_max_bytes,
            backup_count=settings.prediction_log_backup_count,
            queue_size=settings.prediction_log_queue_size,
            on_drop=metrics.prediction_log_dropped.inc,
        ),
        watcher=watcher,
    )
    install_error_handlers(app)
    app.add_exception_handler(ModelNotReadyError, _model_not_ready)

    app.include_router(predict.router)
    app.include_router(model.router)
    app.include_router(health.router)
    if settings.webhook_secret is not None:
        app.include_router(webhooks.router)

    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    # Added last, so outermost: requests the guard refuses (413, 415) are counted too.
    Instrumentator(
        should_group_status_codes=True,
        excluded_handlers=["/metrics"],
        registry=metrics.registry,
    ).instrument(app, latency_lowr_buckets=HTTP_LATENCY_BUCKETS)
    return app
