"""Prometheus metrics of the gateway, on a registry of its own (one per app instance).

HTTP metrics come from prometheus-fastapi-instrumentator (`http_requests_total`,
`http_request_duration_seconds`, labelled by route template); the gateway adds:

- `iris_gateway_upstream_errors_total{upstream,reason}`: calls to the predictor, Redis (job
  records and the Celery broker) or MLflow that failed (`connect`, `timeout`, `transport`,
  `status_5xx`, `unavailable`, ...);
- `iris_retrain_jobs_submitted_total`: retrain jobs accepted (202).

Dashboards and alerts are written against these exact names.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
)
from prometheus_fastapi_instrumentator import Instrumentator

# Fine buckets: a proxied prediction takes milliseconds, and the instrumentator's default
# (0.1, 0.5, 1 s) would put every request in the first bucket.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry
    upstream_errors: Counter
    jobs_submitted: Counter

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.labels(upstream=upstream, reason=reason).inc()


def create_metrics() -> GatewayMetrics:
    registry = CollectorRegistry()
    # A registry of its own starts empty: add the process metrics (CPU, memory) that the
    # default registry would have, so dashboards see the gateway like the predictor.
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return GatewayMetrics(
        registry=registry,
        upstream_errors=Counter(
            "iris_gateway_upstream_errors_total",
            "Calls from the gateway to an upstream that failed.",
            ["upstream", "reason"],
            registry=registry,
        ),
        jobs_submitted=Counter(
            "iris_retrain_jobs_submitted_total",
            "Retrain jobs accepted by the gateway.",
            registry=registry,
        ),
    )


def instrument(app: FastAPI, metrics: GatewayMetrics) -> None:
    Instrumentator(
        should_group_status_codes=True,
        excluded_handlers=["/metrics"],
        registry=metrics.registry,
    ).instrument(
        app, latency_lowr_buckets=LATENCY_BUCKETS, latency_highr_buckets=LATENCY_BUCKETS
    ).expose(app, endpoint="/metrics", include_in_schema=False)
