"""The predictor: serves `models:/<name>@<alias>` from MLflow and follows the alias without restart.

Endpoints:

    POST /predict            one flower -> species, probabilities, model version, request id
    POST /predict/batch      {"instances": [...]} -> predictions in input order
    GET  /model              the served model (name, version, alias, run, metrics, source)
                             and the challenger scoring in its shadow
    GET  /healthz            200 while the process is alive
    GET  /readyz             200 once a model is loaded, 503 before
    GET  /metrics            Prometheus metrics
    POST /webhooks/mlflow    MLflow webhook receiver (only when PREDICTOR_WEBHOOK_SECRET is set)
    /v2/...                  Open Inference Protocol V2, JSON and binary (routes/open_inference.py)
    POST /invocations        MLflow's scoring protocol, with GET /ping, /health, /version
                             (routes/mlflow_scoring.py)

Run it with `python -m iris_predictor` (one process per core, see iris_shared.server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from iris_predictor.config import PredictorSettings, get_settings
from iris_predictor.core import PredictionCore
from iris_predictor.feedback import PredictionStore
from iris_predictor.inference import LoadedModel, MicroBatcher
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.monitoring import DriftMonitor, ShadowScorer
from iris_predictor.prediction_log import PredictionLog
from iris_predictor.recorder import Monitors, PredictionRecorder
from iris_predictor.registry_alias import RegistryAlias
from iris_predictor.routes import health, mlflow_scoring, model, open_inference, predict, webhooks
from iris_predictor.serving import ModelHolder
from iris_predictor.state import PredictorState
from iris_predictor.watcher import ModelWatcher, report_fast_path
from iris_shared.feedback import FeedbackKeys
from iris_shared.logging import configure_logging
from iris_shared.server import WorkerPeers
from iris_shared.service import create_service_app
from iris_shared.settings import export_mlflow_password, with_password

ModelSource = LoadedModel | RegistryAlias


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: PredictorState = app.state.predictor
    state.recorder.start()
    watchers = [w for w in (state.watcher, state.challenger_watcher) if w is not None]
    # The first load happens in the watcher's thread: /healthz answers at once and /readyz
    # turns 200 when the model is in.
    for watcher in watchers:
        watcher.start()
    try:
        yield
    finally:
        for watcher in watchers:
            watcher.stop()
        state.batcher.close()
        state.recorder.stop()


def create_app(
    settings: PredictorSettings | None = None, model_source: ModelSource | None = None
) -> FastAPI:
    """Build the app. `model_source`: an already-loaded model to serve as is (no registry), or
    a `RegistryAlias` to follow; by default the registry the settings describe."""
    settings = settings or get_settings()
    configure_logging("predictor", settings.log_level)
    export_mlflow_password(settings.mlflow_tracking_password)

    metrics = PredictorMetrics()
    peers = WorkerPeers(settings.workers)
    watcher: ModelWatcher | None = None
    challenger: ModelHolder | None = None
    challenger_watcher: ModelWatcher | None = None
    if isinstance(model_source, LoadedModel):
        holder = ModelHolder(model_source.info.name, model_source.info.alias, model_source)
        metrics.model_served(model_source.info.name, model_source.version, model_source.info.alias)
        report_fast_path(model_source, metrics)
        peers.mark_ready()
    else:
        registry = model_source or registry_for(settings, settings.model_alias)
        holder = ModelHolder(registry.name, registry.alias)
        watcher = ModelWatcher(registry, holder, metrics, settings.poll_interval_s, peers)
        if settings.challenger_alias:
            challenger_registry = registry_for(settings, settings.challenger_alias, registry)
            challenger = ModelHolder(challenger_registry.name, challenger_registry.alias)
            challenger_watcher = ModelWatcher(
                challenger_registry,
                challenger,
                metrics,
                settings.poll_interval_s,
                peers,
                answers=False,
            )
    store = None
    if settings.redis_url is not None:
        store = PredictionStore(
            redis.Redis.from_url(
                with_password(settings.redis_url, settings.redis_password),
                socket_timeout=2,
                socket_connect_timeout=2,
            ),
            FeedbackKeys(settings.jobs_namespace),
            metrics,
            window_s=settings.feedback_window_s,
            max_predictions=settings.max_stored_predictions,
            max_bytes=settings.store_max_bytes,
            max_rows=settings.store_max_rows,
        )
    monitors = Monitors(
        drift=DriftMonitor(holder, metrics, settings.drift_window_rows, settings.drift_interval_s),
        store=store,
        shadow=ShadowScorer(challenger, metrics, settings.shadow_queue_size, store)
        if challenger is not None
        else None,
    )

    routers = [model.router, health.router]
    if settings.webhook_secret is not None:
        routers.append(webhooks.router)
    app = create_service_app(
        title="iris-mlops predictor",
        description=(__doc__ or "").split("\n\n")[0],
        version="0.1.0",
        settings=settings,
        metrics=metrics,
        routers=routers,
        plain_routes=[*predict.ROUTES, *open_inference.ROUTES, *mlflow_scoring.ROUTES],
        json_bodies=[*predict.JSON_BODIES, *open_inference.JSON_BODIES],
        lifespan=lifespan,
    )
    batcher = MicroBatcher(settings.max_queued_rows, on_call=metrics.model_called)
    recorder = PredictionRecorder(
        PredictionLog(
            settings.prediction_log_dir,
            max_bytes=settings.prediction_log_max_bytes,
            backup_count=settings.prediction_log_backup_count,
        ),
        metrics,
        queue_size=settings.prediction_log_queue_size,
        monitors=monitors,
        max_backlog_rows=settings.prediction_log_max_backlog_rows,
    )
    app.state.predictor = PredictorState(
        settings=settings,
        holder=holder,
        metrics=metrics,
        batcher=batcher,
        recorder=recorder,
        core=PredictionCore(holder, batcher, recorder, metrics, challenger),
        watcher=watcher,
        peers=peers,
        feedback_rows=settings.store_max_rows if store is not None else 0,
        challenger=challenger,
        challenger_watcher=challenger_watcher,
    )
    return app


def registry_for(
    settings: PredictorSettings, alias: str, like: RegistryAlias | None = None
) -> RegistryAlias:
    """The registry to follow `alias` in: the settings' MLflow, or the same as `like`'s."""
    return RegistryAlias(
        tracking_uri=like.tracking_uri if like else settings.mlflow_tracking_uri,
        name=like.name if like else settings.model_name,
        alias=alias,
        cache_dir=settings.cache_dir,
        connect_timeout_s=settings.mlflow_probe_timeout_s,
    )
