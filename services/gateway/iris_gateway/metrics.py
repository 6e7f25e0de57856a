"""The gateway's metrics, by the names the dashboards and alert rules use.

HTTP metrics, `/metrics` and the merge across worker processes come from
`iris_shared.metrics.ServiceMetrics`; the gateway adds:

- `iris_gateway_upstream_errors_total{upstream,reason}`: calls to the predictor, Redis (job
  records and the Celery broker) or MLflow that failed (`connect`, `timeout`, `transport`,
  `status_5xx`, `unavailable`, ...);
- `iris_retrain_jobs_submitted_total`: retrain jobs accepted (202);
- `iris_retrain_jobs_refused_total`: retrain jobs refused because RETRAIN_MAX_PENDING jobs
  were pending already (429).
"""

from __future__ import annotations

from prometheus_client import Counter

from iris_shared.metrics import ServiceMetrics


class GatewayMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.upstream_errors = Counter(
            "iris_gateway_upstream_errors_total",
            "Calls from the gateway to an upstream that failed.",
            ["upstream", "reason"],
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "iris_retrain_jobs_submitted_total",
            "Retrain jobs accepted by the gateway.",
            registry=self.registry,
        )
        self.jobs_refused = Counter(
            "iris_retrain_jobs_refused_total",
            "Retrain jobs refused because the cap on pending jobs was reached.",
            registry=self.registry,
        )

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.labels(upstream=upstream, reason=reason).inc()
