"""The gateway's metrics, by the names the dashboards and alert rules use.

HTTP metrics, `/metrics` and the merge across worker processes come from
`iris_shared.metrics.ServiceMetrics`; the gateway adds:

- `iris_gateway_prediction_requests_total{protocol,status}`: prediction requests passed to the
  predictor, by protocol (`native` for /predict and /predict/batch, `v2` for the Open Inference
  Protocol's infer, `mlflow` for /invocations) and status class (`2xx`; `5xx` includes the
  gateway's own 502/504 when no predictor answered);
- `iris_gateway_upstream_errors_total{upstream,reason}`: calls to the predictor, Redis (job
  records and the Celery broker) or MLflow that failed (`connect`, `timeout`, `transport`,
  `status_5xx`, `unavailable`, ...);
- `iris_retrain_jobs_submitted_total`: retrain jobs accepted (202);
- `iris_retrain_jobs_refused_total`: retrain jobs refused because RETRAIN_MAX_PENDING jobs
  were pending already (429);
- `iris_feedback_total{model_version,correct}`: labels accepted by POST /feedback, by the
  version that answered and whether its answer was right (`true`/`false`);
- `iris_live_accuracy{model_version}`: the share of right answers among the version's last
  GATEWAY_LIVE_ACCURACY_WINDOW labelled answers, as of the latest label.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge

from iris_shared.metrics import ServiceMetrics


class GatewayMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.prediction_requests = Counter(
            "iris_gateway_prediction_requests_total",
            "Prediction requests passed to the predictor, by protocol and status class.",
            ["protocol", "status"],
            registry=self.registry,
        )
        # `labels()` validates and locks on every call; protocols and classes are few.
        self._prediction_requests_of = functools.lru_cache(maxsize=64)(
            self.prediction_requests.labels
        )
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
        self.feedback = Counter(
            "iris_feedback_total",
            "Labels accepted for answered predictions, by model version and whether it was right.",
            ["model_version", "correct"],
            registry=self.registry,
        )
        # The value is computed from Redis, which every process shares, so the latest value set
        # by any process is the right one. `mostrecent` exposes exactly that (prometheus_client
        # keeps a timestamp per process and value), and keeps it after the process that set it
        # exits. `livemax` would show the highest value any live process saw last, which stays
        # stale in a process that has had no label for that version since.
        self.live_accuracy = Gauge(
            "iris_live_accuracy",
            "Share of right answers among a model version's last labelled answers.",
            ["model_version"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )

    def prediction_request(self, protocol: str, status: int) -> None:
        self._prediction_requests_of(protocol, f"{status // 100}xx").inc()

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.labels(upstream=upstream, reason=reason).inc()

    def feedback_given(self, model_version: str, *, correct: bool) -> None:
        self.feedback.labels(model_version=model_version, correct=str(correct).lower()).inc()
