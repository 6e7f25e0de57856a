"""Dependencies handing the lifespan's shared resources to the routes."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from iris_gateway.config import GatewaySettings
from iris_gateway.jobs import JobStore
from iris_gateway.metrics import GatewayMetrics
from iris_gateway.registry import ModelRegistry
from iris_gateway.upstream import PredictorClient


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _predictor(request: Request) -> PredictorClient:
    return request.app.state.predictor  # type: ignore[no-any-return]


def _jobs(request: Request) -> JobStore:
    return request.app.state.jobs  # type: ignore[no-any-return]


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _celery(request: Request) -> Celery:
    return request.app.state.celery


def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
PredictorDep = Annotated[PredictorClient, Depends(_predictor)]
JobStoreDep = Annotated[JobStore, Depends(_jobs)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
CeleryDep = Annotated[Celery, Depends(_celery)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
