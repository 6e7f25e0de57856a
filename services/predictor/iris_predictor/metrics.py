"""The predictor's metrics, by the names the dashboards and alert rules use.

HTTP metrics, `/metrics` and the merge across worker processes come from
`iris_shared.metrics.ServiceMetrics`; this adds the model's own. Per-row quantities are
observed once per batch of rows, not once per row: a histogram `observe` per value would
cost more than scoring the row.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

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
        self.feature_value = self.bulk_histogram(
            "iris_feature_value_cm",
            "Measurements received, in centimetres (watch for drift).",
            ["feature"],
            FEATURE_BUCKETS,
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
        self.prediction_log_waits = Counter(
            "iris_prediction_log_waits_total",
            "Requests held back until the prediction log caught up with the answers.",
            registry=registry,
        )
        # Whether the model is still right (iris_shared.feedback), scored off the request path.
        self.drift_psi = Gauge(
            "iris_feature_drift_psi",
            "Population stability index of recent inputs against the served version's "
            "training data, per feature (above 0.2: the inputs have shifted).",
            ["feature"],
            registry=registry,
            # Each process scores the inputs it saw; the worst of them is the one to watch.
            multiprocess_mode="livemax",
        )
        self.shadow_predictions = Counter(
            "iris_shadow_predictions_total",
            "Rows the challenger scored after production answered, by agreement with it.",
            ["model_version", "agree"],
            registry=registry,
        )
        self.shadow_seconds = Histogram(
            "iris_shadow_inference_seconds",
            "Time the challenger took to score one batch of answered requests.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "iris_shadow_dropped_total",
            "Answered requests not shadow-scored because the shadow queue was full.",
            registry=registry,
        )
        self.model_age = Gauge(
            "iris_model_age_seconds",
            "Seconds since the served version was registered, per alias.",
            ["alias"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.prediction_store_failures = Counter(
            "iris_prediction_store_failures_total",
            "Answered requests not kept for feedback because Redis failed.",
            registry=registry,
        )
        self.prediction_store_dropped = Counter(
            "iris_prediction_store_dropped_total",
            "Kept answers forgotten before anyone labelled them, by reason: expired (the "
            "feedback window), count or bytes (the store's bounds; the oldest go first).",
            ["reason"],
            registry=registry,
        )
        self.prediction_store_collisions = Counter(
            "iris_prediction_store_collisions_total",
            "Answers not kept because their request id was taken already (never overwritten).",
            registry=registry,
        )
        self.prediction_requests = Counter(
            "iris_prediction_requests_total",
            "Answered prediction requests, by the protocol they came in by (native, v2, mlflow).",
            ["protocol"],
            registry=registry,
        )
        self.prediction_rows = Counter(
            "iris_prediction_rows_total",
            "Rows scored in answered prediction requests, by protocol.",
            ["protocol"],
            registry=registry,
        )
        self.scorer_mismatch = Gauge(
            "iris_model_scorer_mismatch",
            "1 while the served version under `alias` is one the numpy scorer was made for but "
            "whose numbers it does not match: scikit-learn scores it, at about half the "
            "throughput (GET /model says by how much they differ).",
            ["alias"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ready.set(0)
        self.load_failing.set(0)
        self._served_labels: dict[str, tuple[str, str, str]] = {}
        # `labels()` validates and locks on every call; (species, version) pairs are few.
        self._predictions_of = functools.lru_cache(maxsize=1024)(self.predictions.labels)
        for feature in FEATURE_NAMES:
            self.feature_value.touch([feature])
        self._requests_by = functools.lru_cache(maxsize=16)(self.prediction_requests.labels)
        self._rows_by = functools.lru_cache(maxsize=16)(self.prediction_rows.labels)

    def model_served(self, name: str, version: str, alias: str, *, answers: bool = True) -> None:
        """`version` is served under `alias` now; `answers`: it is the one requests get."""
        self._forget_served(alias)
        labels = (name, version, alias)
        self.model_info.labels(*labels).set(1)
        self._served_labels[alias] = labels
        if answers:
            self.ready.set(1)

    def model_dropped(self, alias: str) -> None:
        """Nothing is served under `alias` any more (the challenger alias was removed)."""
        self._forget_served(alias)
        self.model_age.labels(alias).set(0)
        self.model_age.remove(alias)

    def _forget_served(self, alias: str) -> None:
        previous = self._served_labels.pop(alias, None)
        if previous is not None:
            # Zero, not only removed: with several processes the old value lives on in a file,
            # and the exposition leaves out info series at 0.
            self.model_info.labels(*previous).set(0)
            self.model_info.remove(*previous)

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

    def count_requests(self, records: Iterable[Any]) -> None:
        """Count answered requests (anything with `protocol` and `rows`) by protocol."""
        requests: dict[str, int] = {}
        rows: dict[str, int] = {}
        for record in records:
            requests[record.protocol] = requests.get(record.protocol, 0) + 1
            rows[record.protocol] = rows.get(record.protocol, 0) + len(record.rows)
        for protocol, count in requests.items():
            self._requests_by(protocol).inc(count)
            self._rows_by(protocol).inc(rows[protocol])

    def scorer_checked(self, alias: str, mismatch: bool) -> None:
        """The numpy scorer does (not) match the version now served under `alias`."""
        self.scorer_mismatch.labels(alias).set(1 if mismatch else 0)

    def model_called(self, requests: int) -> None:
        self.batch_requests.observe(requests)

    def observe_features(self, rows: np.ndarray) -> None:
        """Observe every measurement of `rows` (n rows, one column per feature) in the feature
        histograms, all columns in one numpy pass."""
        histogram = self.feature_value
        width = len(histogram.upper_bounds)
        # A value lands in the first bucket whose bound is >= it, as Histogram.observe puts it.
        slots = np.searchsorted(histogram.upper_bounds, rows, side="left")
        slots += np.arange(len(FEATURE_NAMES)) * width
        counts = np.bincount(slots.ravel(), minlength=width * len(FEATURE_NAMES)).tolist()
        sums = rows.sum(axis=0).tolist()
        for column, feature in enumerate(FEATURE_NAMES):
            histogram.observe_counts(
                [feature], counts[column * width : (column + 1) * width], sums[column]
            )
