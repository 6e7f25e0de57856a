"""Prometheus metrics, built the same way in every service.

- Each service subclasses `ServiceMetrics` and declares its own metrics on `self.registry`
  (one registry per app, so tests can run several apps in one process).
- HTTP metrics, by the names and labels of prometheus-fastapi-instrumentator's (dashboards and
  alerts read them): `http_requests_total{handler,method,status}` and
  `http_request_duration_seconds{handler,method}`, status grouped as `2xx`, `handler` the route
  template. `iris_shared.http.ServiceMiddleware` reports each request to `observe_request`
  rather than the instrumentator matching each route again (see the middleware).
- Series labelled `model_version` are exposed for the last `KEPT_MODEL_VERSIONS` versions only:
  each retrain adds a version, and a series per version ever served would grow without end.
- `BulkHistogram`: a histogram observed a whole array of values at a time (prometheus_client
  observes one value per call), on public APIs only.
- `/metrics` is `exposition()`. With several server processes (`iris_shared.server` sets
  PROMETHEUS_MULTIPROC_DIR) it merges every process's files: counters and histograms are
  summed across processes, dead processes' live gauges are dropped, info gauges set to 0 by a
  process that moved on are left out, and process CPU and memory are summed over the live
  server processes (prometheus_client has no process metrics in that mode).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from iris_shared.server import MULTIPROC_ENV, process_alive

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Fine enough for a p99 of requests that take milliseconds.
HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Routes whose requests are not worth a series of their own.
UNMEASURED_HANDLERS = ("/metrics",)

_METRIC_FILE = re.compile(r"^[a-z]+_(?:[a-z]+_)?(\d+)\.db$")

MODEL_VERSION_LABEL = "model_version"
KEPT_MODEL_VERSIONS = 5


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


class ServiceMetrics:
    """A service's metrics registry, its HTTP instrumentation and its `/metrics` exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._multiprocess_dir = multiprocess_dir()
        if self._multiprocess_dir is None:
            ProcessCollector(registry=self.registry)
            for collector in (PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)

        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by route template, method and status class.",
            ["handler", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["handler", "method"],
            buckets=HTTP_LATENCY_BUCKETS,
            registry=self.registry,
        )

        # `labels()` validates and locks on every call; the label sets here are few and fixed.
        self._requests_of = functools.lru_cache(maxsize=1024)(self.http_requests.labels)
        self._duration_of = functools.lru_cache(maxsize=1024)(self.http_duration.labels)
        self._bulk_histograms: list[BulkHistogram] = []

    def bulk_histogram(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> BulkHistogram:
        """A `BulkHistogram` on this registry, exposed as the histogram `name`."""
        histogram = BulkHistogram(name, documentation, labelnames, buckets, self.registry)
        self._bulk_histograms.append(histogram)
        return histogram

    def observe_request(self, handler: str, method: str, status: int, seconds: float) -> None:
        if handler in UNMEASURED_HANDLERS:
            return
        self._requests_of(handler, method, f"{status // 100}xx").inc()
        self._duration_of(handler, method).observe(seconds)

    def install(self, app: FastAPI) -> None:
        """Serve `GET /metrics` from this registry."""

        async def metrics() -> Response:
            return Response(self.exposition(), media_type=CONTENT_TYPE)

        app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)

    def exposition(self) -> bytes:
        if self._multiprocess_dir is None:
            collected: Collector = self.registry
        else:
            merged = CollectorRegistry()
            merged.register(_LiveFilesCollector(self._multiprocess_dir))
            merged.register(_ServerProcessesCollector(self._multiprocess_dir))
            collected = merged
        return generate_latest(_RecentVersionsOnly(_AsHistograms(collected, self._bulk_histograms)))


class BulkHistogram:
    """A histogram observed an array at a time: what `Histogram.observe` does for each value,
    with one increment per bucket.

    prometheus_client observes one value per call, which for a 1,000-row batch of four
    measurements is 4,000 calls. Here each bucket is a series of the counter
    `<name>_bucket_observations` (labels and `le`: what landed in that bucket alone) and the sum
    one of `<name>_sum_observations`; both are summed across processes like any counter, and
    `ServiceMetrics.exposition` turns them back into the histogram `<name>`, cumulative buckets,
    `_sum` and `_count` as a `Histogram` writes them (its tests compare the two). Values must
    not be negative: the sum is a counter.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = [float(bound) for bound in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.upper_bounds = tuple(bounds)
        # The `le` values exactly as prometheus_client's Histogram writes them.
        self.le_labels = tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]
        self.bucket_metric = f"{name}_bucket_observations"
        self.sum_metric = f"{name}_sum_observations"
        self.bucket_counter = Counter(
            self.bucket_metric,
            f"{documentation} Per bucket, not cumulative; exposed as the histogram {name}.",
            [*self.labelnames, "le"],
            registry=registry,
        )
        self.sum_counter = Counter(
            self.sum_metric,
            f"{documentation} Sum of the values; exposed as {name}_sum.",
            list(self.labelnames),
            registry=registry,
        )
        self._bucket = functools.lru_cache(maxsize=4096)(self.bucket_counter.labels)
        self._sum = functools.lru_cache(maxsize=256)(self.sum_counter.labels)

    def touch(self, labels: Sequence[str]) -> None:
        """Expose these label values, at zero, before anything is observed (as
        `Histogram.labels` does)."""
        self._sum(*labels)

    def observe_counts(self, labels: Sequence[str], counts: Sequence[int], total: float) -> None:
        """Count `counts[i]` values in bucket i (the first whose upper bound is >= the value,
        as `Histogram.observe` places it) for these label values, their sum being `total`."""
        for le, count in zip(self.le_labels, counts, strict=True):
            if count:
                self._bucket(*labels, le).inc(count)
        self._sum(*labels).inc(total)

    def histogram(self, metrics: Iterable[Metric]) -> HistogramMetricFamily:
        """The histogram `name`, from the collected counters of its buckets and sum."""
        per_bucket: defaultdict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
        sums: dict[tuple[str, ...], float] = {}
        for metric in metrics:
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = tuple(sample.labels[name] for name in self.labelnames)
                if metric.name == self.bucket_metric:
                    per_bucket[key][sample.labels["le"]] = sample.value
                else:
                    sums[key] = sample.value
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        # In the order the series appeared, as a Histogram lists its children.
        for key in dict.fromkeys([*sums, *per_bucket]):
            counts = per_bucket.get(key, {})
            cumulative, buckets = 0.0, []
            for le in self.le_labels:
                cumulative += counts.get(le, 0.0)
                buckets.append((le, cumulative))
            family.add_metric(list(key), buckets, sums.get(key, 0.0))
        return family


class _AsHistograms(Collector):
    """A registry's metrics, with each `BulkHistogram`'s counters shown as its histogram."""

    def __init__(self, collected: Collector, histograms: Sequence[BulkHistogram]) -> None:
        self.collected = collected
        self.histograms = {
            counter: histogram
            for histogram in histograms
            for counter in (histogram.bucket_metric, histogram.sum_metric)
        }

    def collect(self) -> Iterator[Metric]:
        parts: defaultdict[str, list[Metric]] = defaultdict(list)
        for metric in self.collected.collect():
            histogram = self.histograms.get(metric.name)
            if histogram is None:
                yield metric
            else:
                parts[histogram.name].append(metric)
        for histogram in {h.name: h for h in self.histograms.values()}.values():
            yield histogram.histogram(parts[histogram.name])


def _version_order(version: str) -> tuple[int, int | str]:
    return (1, int(version)) if version.isdigit() else (0, version)


class _RecentVersionsOnly(Collector):
    """A registry's metrics, without the series of model versions older than the last
    `KEPT_MODEL_VERSIONS` each metric has seen."""

    def __init__(self, registry: Collector) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            versions = {
                s.labels[MODEL_VERSION_LABEL]
                for s in metric.samples
                if MODEL_VERSION_LABEL in s.labels
            }
            if len(versions) > KEPT_MODEL_VERSIONS:
                kept = set(sorted(versions, key=_version_order)[-KEPT_MODEL_VERSIONS:])
                metric.samples = [
                    s
                    for s in metric.samples
                    if MODEL_VERSION_LABEL not in s.labels or s.labels[MODEL_VERSION_LABEL] in kept
                ]
            yield metric


def _pids_with_files(folder: Path) -> set[int]:
    pids = set()
    for name in os.listdir(folder):
        match = _METRIC_FILE.match(name)
        if match:
            pids.add(int(match.group(1)))
    return pids


class _LiveFilesCollector(Collector):
    """prometheus_client's merge of the folder, after dropping what dead processes left behind."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._merge = multiprocess.MultiProcessCollector(None, path=str(folder))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for pid in _pids_with_files(self.folder):
            if not process_alive(pid):
                # Removes its live gauges; its counters stay, so totals never go backwards.
                multiprocess.mark_process_dead(pid, str(self.folder))  # type: ignore[no-untyped-call]
        for metric in self._merge.collect():  # type: ignore[no-untyped-call]
            if metric.type == "gauge" and metric.name.endswith("_info"):
                # A process that swapped to another version keeps the old labels at 0 in its
                # file; an info series exists only while something is at 1.
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric


class _ServerProcessesCollector(Collector):
    """process_* metrics summed over the live processes of this server (workers and parent)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _pids(self) -> set[int]:
        pids = {pid for pid in _pids_with_files(self.folder) if process_alive(pid)}
        pids.add(os.getpid())
        pids.add(os.getppid())  # uvicorn's supervisor
        return pids

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        totals: dict[str, float] = {}
        for pid in self._pids():
            for metric in ProcessCollector(
                pid=functools.partial(int, pid), registry=None
            ).collect():
                for sample in metric.samples:
                    if sample.name not in totals:
                        merged[sample.name] = metric
                        totals[sample.name] = sample.value
                    elif sample.name == "process_start_time_seconds":
                        totals[sample.name] = min(totals[sample.name], sample.value)
                    elif sample.name == "process_max_fds":
                        totals[sample.name] = max(totals[sample.name], sample.value)
                    else:
                        totals[sample.name] += sample.value
        for name, metric in merged.items():
            family = Metric(metric.name, metric.documentation, metric.type)
            family.samples = [Sample(name, {}, totals[name], None, None)]
            yield family
