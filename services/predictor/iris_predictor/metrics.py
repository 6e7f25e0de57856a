"""The predictor's metrics, by the names the dashboards and alert rules use.

HTTP metrics, `/metrics` and the merge across worker processes come from
`iris_shared.metrics.ServiceMetrics`; this adds the model's own. Per-row quantities are
observed once per batch of rows, not once per row: a histogram `observe` per value would
cost more than scoring the row.
"""

from __future__ import annotations

import functools

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from iris_shared.metrics import ServiceMetrics
from iris_shared.schemas import FEATURE_NAMES

# Iris measurements are 0.1-8 cm: half-centimetre steps up to 10, then coarse ones up to the
# 50 cm the schema allows, so a unit mistake (mm) stands out.
FEATURE_BUCKETS = (*(step / 2 for step in range(1, 21)), 15.0, 20.0, 30.0, 50.0)


class PredictorMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        registry = self.registry
        self.predictions = Counter(
            "iris_predictions_total",
            "Predictions served, by predicted species and model version.",
            ["species", "model_version"],
            registry=registry,
        )
        self.model_info = Gauge(
            "iris_model_info",
            "1 for the model version being served.",
            ["name", "version", "alias"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "iris_model_reloads_total",
            "Models loaded from the registry and swapped in (the first load included).",
            registry=registry,
        )
        self.reload_failures = Counter(
            "iris_model_reload_failures_total",
            "Failed attempts to follow the alias: MLflow unreachable, or a version failed to load.",
            registry=registry,
        )
        self.load_failing = Gauge(
            "iris_model_load_failing",
            "1 while the alias points at a version that fails to load (the old one serves).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "iris_model_ready",
            "1 when a model is loaded and /predict answers (in every worker process), else 0.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.feature_value = Histogram(
            "iris_feature_value_cm",
            "Measurements received, in centimetres (watch for drift).",
            ["feature"],
            buckets=FEATURE_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "iris_inference_batch_requests",
            "Requests scored together in one call of the model (micro-batching at work).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.prediction_log_dropped = Counter(
            "iris_prediction_log_dropped_total",
            "Prediction log records dropped because the log queue was full.",
            registry=registry,
        )
        self.ready.set(0)
        self.load_failing.set(0)
        self._served_labels: tuple[str, str, str] | None = None
        # `labels()` validates and locks on every call; (species, version) pairs are few.
        self._predictions_of = functools.lru_cache(maxsize=1024)(self.predictions.labels)

    def model_served(self, name: str, version: str, alias: str) -> None:
        labels = (name, version, alias)
        if self._served_labels is not None and self._served_labels != labels:
            # Zero, not only removed: with several processes the old value lives on in a file,
            # and the exposition leaves out info series at 0.
            self.model_info.labels(*self._served_labels).set(0)
            self.model_info.remove(*self._served_labels)
        self.model_info.labels(*labels).set(1)
        self._served_labels = labels
        self.ready.set(1)

    def count_predictions(
        self, probabilities: np.ndarray, classes: tuple[str, ...], version: str
    ) -> None:
        """Count one batch of answers: one increment per species, not per row."""
        if len(probabilities) == 1:
            self._predictions_of(classes[int(probabilities[0].argmax())], version).inc()
            return
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(classes))
        for species, count in zip(classes, counts.tolist(), strict=True):
            if count:
                self._predictions_of(species, version).inc(count)

    def model_called(self, requests: int) -> None:
        self.batch_requests.observe(requests)

    def observe_features(self, rows: np.ndarray) -> None:
        """Observe every measurement of `rows` (n rows, 4 columns) in the feature histograms."""
        for column, feature in enumerate(FEATURE_NAMES):
            observe_many(self.feature_value.labels(feature), rows[:, column])


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """What `histogram.observe(v)` for each value does, with one increment per bucket.

    prometheus_client has no bulk observe; this uses its bucket bounds and values the way
    `Histogram.observe` does (a value lands in the first bucket whose bound is >= it), which
    tests/test_metrics.py checks against `observe` on the pinned version.
    """
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))
