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
- `/metrics` is `exposition()`. With several server processes (`iris_shared.server` sets
  PROMETHEUS_MULTIPROC_DIR) it merges every process's files: counters and histograms are
  summed across processes, dead processes' live gauges are dropped, info gauges set to 0 by a
  process that moved on are left out, and process CPU and memory are summed over the live
  server processes (prometheus_client has no process metrics in that mode).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
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
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

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
            return generate_latest(_RecentVersionsOnly(self.registry))
        merged = CollectorRegistry()
        merged.register(_LiveFilesCollector(self._multiprocess_dir))
        merged.register(_ServerProcessesCollector(self._multiprocess_dir))
        return generate_latest(_RecentVersionsOnly(merged))


def _version_order(version: str) -> tuple[int, int | str]:
    return (1, int(version)) if version.isdigit() else (0, version)


class _RecentVersionsOnly(Collector):
    """A registry's metrics, without the series of model versions older than the last
    `KEPT_MODEL_VERSIONS` each metric has seen."""

    def __init__(self, registry: CollectorRegistry) -> None:
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
