"""Prometheus metrics: HTTP metrics from prometheus-fastapi-instrumentator plus the model's own.

Each app gets its own `CollectorRegistry`, so several apps (tests) can live in one process.
With several uvicorn workers set `PROMETHEUS_MULTIPROC_DIR` to an empty folder shared by the
workers: `/metrics` then aggregates every worker's files (process CPU/memory metrics are not
available in that mode, a prometheus_client limitation).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from iris_shared.schemas import FEATURE_NAMES

# Fine enough for a p95 of a /predict that takes milliseconds.
HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Iris measurements are 0.1-8 cm: half-centimetre steps up to 10, then coarse ones up to the
# 50 cm the schema allows, so a unit mistake (mm) stands out.
FEATURE_BUCKETS = (*(step / 2 for step in range(1, 21)), 15.0, 20.0, 30.0, 50.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_mode() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class PredictorMetrics:
    """The model metrics, by the names the dashboards and alert rules use."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        if not multiprocess_mode():
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            self.registry.register(GC_COLLECTOR)
        self.predictions = Counter(
            "iris_predictions_total",
            "Predictions served, by predicted species and model version.",
            ["species", "model_version"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "iris_model_info",
            "1 for the model version being served.",
            ["name", "version", "alias"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "iris_model_reloads_total",
            "Models loaded from the registry and swapped in (the first load included).",
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "iris_model_reload_failures_total",
            "Failed attempts to follow the alias: MLflow unreachable, or a version failed to load.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "iris_model_ready",
            "1 when a model is loaded and /predict answers, else 0.",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.feature_value = Histogram(
            "iris_feature_value_cm",
            "Measurements received, in centimetres (watch for drift).",
            ["feature"],
            buckets=FEATURE_BUCKETS,
            registry=self.registry,
        )
        self.prediction_log_dropped = Counter(
            "iris_prediction_log_dropped_total",
            "Prediction log lines dropped because the log queue was full.",
            registry=self.registry,
        )
        self.ready.set(0)
        self._served_labels: tuple[str, str, str] | None = None

    def model_served(self, name: str, version: str, alias: str) -> None:
        labels = (name, version, alias)
        if self._served_labels is not None and self._served_labels != labels:
            # Zero first: in multiprocess mode the old value lives on in a file after remove.
            self.model_info.labels(*self._served_labels).set(0)
            self.model_info.remove(*self._served_labels)
        self.model_info.labels(*labels).set(1)
        self._served_labels = labels
        self.ready.set(1)

    def observe(
        self, rows: Iterable[Sequence[float]], species: Iterable[str], version: str
    ) -> None:
        for row in rows:
            for feature, value in zip(FEATURE_NAMES, row, strict=True):
                self.feature_value.labels(feature).observe(value)
        for name in species:
            self.predictions.labels(name, version).inc()

    def exposition(self) -> bytes:
        if multiprocess_mode():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
