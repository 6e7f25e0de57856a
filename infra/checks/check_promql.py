"""Check the PromQL of the alert rules and the Grafana dashboard against what the services expose.

promtool already parses the rules; this adds what it cannot know: every metric a rule or a panel
reads is one the services export (a typo there gives an empty panel or an alert that never
fires, silently), the dashboard's queries parse once Grafana's variables are filled in, and
every panel uses the provisioned datasource.

Usage: python infra/checks/check_promql.py   (exit status 1 and one line per problem)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "infra/prometheus/rules"
DASHBOARDS_DIR = ROOT / "infra/grafana/dashboards"
DATASOURCES = ROOT / "infra/grafana/provisioning/datasources/prometheus.yml"

# What the services and the exporters export, by source, plus Prometheus's own series (`up`,
# and `ALERTS` for the rules' alerts). Keep in step with the code (services/*/iris_*/metrics.py,
# iris_shared.metrics) and the exporters' versions: Flower 2.2 (uv.lock) and redis_exporter
# (compose.yaml; Debian 12 has 1.45), whose names were read from their real /metrics.
PROMETHEUS = {"up", "ALERTS"}
SERVICES = {
    # iris_shared.metrics, every service
    "http_requests_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    # predictor
    "iris_predictions_total",
    "iris_model_info",
    "iris_model_reloads_total",
    "iris_model_reload_failures_total",
    "iris_model_load_failing",
    "iris_model_ready",
    "iris_model_age_seconds",
    "iris_prediction_log_dropped_total",
    "iris_prediction_store_failures_total",
    "iris_feature_drift_psi",
    "iris_shadow_predictions_total",
    "iris_shadow_dropped_total",
    # gateway
    "iris_gateway_upstream_errors_total",
    "iris_retrain_jobs_submitted_total",
    "iris_retrain_jobs_refused_total",
    "iris_feedback_total",
    "iris_live_accuracy",
}
FLOWER = {
    "flower_events_total",
    "flower_worker_online",
    "flower_worker_number_of_currently_executing_tasks",
    "flower_worker_prefetched_tasks",
    "flower_task_prefetch_time_seconds",
}
REDIS_EXPORTER = {"redis_up", "redis_key_size"}
COUNTERS_AND_GAUGES = PROMETHEUS | SERVICES | FLOWER | REDIS_EXPORTER
HISTOGRAMS = {
    "http_request_duration_seconds",
    "iris_feature_value_cm",
    "iris_inference_batch_requests",
    "iris_shadow_inference_seconds",
    "flower_task_runtime_seconds",
}
KNOWN_SERIES = COUNTERS_AND_GAUGES | {
    f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")
}

# Values that make Grafana's variables valid PromQL; only the syntax matters here.
GRAFANA_INTERVALS = re.compile(r"\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?")
GRAFANA_VARIABLE = re.compile(r"\$\{[A-Za-z0-9_]+(:[a-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*")


def fill_grafana_variables(expr: str) -> str:
    return GRAFANA_VARIABLE.sub("x", GRAFANA_INTERVALS.sub("5m", expr))


def series_names(expr: str) -> set[str]:
    """The metric names an expression selects (raises ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def rule_expressions() -> Iterator[tuple[str, str]]:
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                yield f"{path.relative_to(ROOT)}: {name}", rule["expr"]


def recorded_names() -> set[str]:
    names = set()
    for path in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def dashboard_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_problems(path: Path, datasource_uids: set[str]) -> Iterator[tuple[str, str | None]]:
    """Yield (problem, None) or (where, expression) for each query to check."""
    where = path.relative_to(ROOT)
    try:
        dashboard = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        yield f"{where}: not valid JSON ({exc})", None
        return
    for key in ("uid", "title", "schemaVersion", "panels"):
        if key not in dashboard:
            yield f"{where}: no {key!r}", None
    ids = [panel.get("id") for panel in dashboard_panels(dashboard)]
    if len(ids) != len(set(ids)):
        yield f"{where}: panel ids are not unique", None
    for panel in dashboard_panels(dashboard):
        title = panel.get("title", "?")
        for target in panel.get("targets", []):
            for datasource in (panel.get("datasource"), target.get("datasource")):
                uid = (datasource or {}).get("uid")
                if uid not in datasource_uids:
                    yield f"{where}: panel {title!r} uses datasource uid {uid!r}, not one of "
                    f"the provisioned {sorted(datasource_uids)}", None
            yield f"{where}: panel {title!r}", fill_grafana_variables(target["expr"])


def main() -> int:
    problems: list[str] = []
    known = KNOWN_SERIES | recorded_names()

    def check(where: str, expr: str) -> None:
        try:
            names = series_names(expr)
        except ValueError as exc:
            problems.append(f"{where}: does not parse: {exc}\n    {expr}")
            return
        problems.extend(f"{where}: unknown metric {name!r}" for name in sorted(names - known))

    checked = 0
    for where, expr in rule_expressions():
        check(where, expr)
        checked += 1

    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    datasource_uids = {datasource["uid"] for datasource in datasources}
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for where, expr in dashboard_problems(path, datasource_uids):
            if expr is None:
                problems.append(where)
            else:
                check(where, expr)
                checked += 1

    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"PromQL: {checked} expressions parse and read only known metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
