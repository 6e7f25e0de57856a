"""Every dashboard query and every alert rule, proven against a real Prometheus.

Prometheus (Debian's package) scrapes the real session services, Flower and redis_exporter,
with the real rule files and the local stack's scrape jobs. The test drives what the panels
show: predictions (one row and batches), feedback, a retrain that succeeds and one that fails,
a challenger scored in the shadow. Then, through Prometheus's HTTP API:

- every panel query of the provisioned dashboards returns data;
- every series an alert rule reads returns data, but for the few that exist only once
  something went wrong (`FAILURE_ONLY`): for those the metric itself must return data, so a
  misspelt name still fails;
- every rule is loaded and evaluates without error.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from mlflow import MlflowClient

from infra.checks.check_promql import (
    DASHBOARDS_DIR,
    RULES_DIR,
    dashboard_panels,
    fill_grafana_variables,
    rule_expressions,
)
from iris_devstack.processes import (
    REPO_ROOT,
    ManagedProcess,
    free_port,
    http_ok,
    tls_context,
    wait_until,
)
from iris_shared.jobs import JobKeys
from iris_shared.registry import CHALLENGER
from tests.support.core import JOBS_NAMESPACE
from tests.support.gateway import start_gateway
from tests.support.worker import RunningFlower

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "Iris-LogisticRegression"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}

# Series that exist only once something failed; the test does not break the stack for them.
# For these, Prometheus must know the metric from the scrape (its HELP and TYPE), so a
# misspelt name still fails.
FAILURE_ONLY = {
    'http_requests_total{status="5xx"}',
    "iris_gateway_upstream_errors_total{}",
    'ALERTS{alertstate="firing"}',
}
# Labelled counters that have no series at all (not even HELP, with several processes) until
# the first failure, and the test that makes that failure and reads the counter.
PROVEN_ELSEWHERE = {
    "iris_gateway_upstream_errors_total": (
        "services/gateway/tests/test_app.py::test_predictor_down_gives_502_quickly"
    ),
}
# Grafana's dashboard variables, set as a person would pick them.
DASHBOARD_VARIABLES = {"$feature": "petal_length", "${feature}": "petal_length"}


def selectors(expr: str) -> list[Any]:
    found: list[Any] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def without_offset(selector: Any) -> str:
    # `x offset 15m` compares with a quarter of an hour ago, which a test does not have.
    return str(selector).split(" offset ")[0]


def dashboard_queries() -> list[tuple[str, str]]:
    import json

    queries = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        for panel in dashboard_panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in DASHBOARD_VARIABLES.items():
                    expr = expr.replace(variable, value)
                expr = fill_grafana_variables(expr).replace("[5m]", "[2m]")
                queries.append((f"{path.name}: {panel.get('title')}", expr))
    return queries


def prometheus_config(targets: dict[str, list[str]], folder: Path) -> Path:
    """The local stack's scrape jobs and rules, aimed at this session's processes."""
    config = yaml.safe_load((REPO_ROOT / "infra/prometheus/prometheus.local.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES_DIR / "*.yml")]
    config.pop("alerting", None)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def exporters(
    logs_dir: Path, redis_url: str, trainer_worker: ManagedProcess, flower: RunningFlower
) -> Iterator[dict[str, str]]:
    """Flower and redis_exporter, run as supervisord runs them, on this session's broker."""
    if shutil.which("prometheus-redis-exporter") is None:
        pytest.fail("prometheus-redis-exporter is missing: run scripts/ensure_tools.sh")
    exporter_port = free_port()
    keys = JobKeys(JOBS_NAMESPACE)
    exporter = ManagedProcess(
        "redis-exporter",
        [
            "prometheus-redis-exporter",
            f"-redis.addr={redis_url}",
            f"-web.listen-address=127.0.0.1:{exporter_port}",
            f"-check-single-keys=db0={keys.broker_prefix}{keys.queue},db0={keys.pending}",
            "-redis-only-metrics",
        ],
        logs_dir,
    )
    try:
        wait_until(
            http_ok(f"http://127.0.0.1:{exporter_port}/metrics"), 30, "redis_exporter", exporter
        )
        yield {
            "flower": flower.url.removeprefix("http://"),
            "redis-exporter": f"127.0.0.1:{exporter_port}",
        }
    finally:
        exporter.stop()


@pytest.fixture(scope="module")
def gateway_without_predictor(
    logs_dir: Path, redis_url: str, trained_registry: str, api_token: str
) -> Iterator[str]:
    """A gateway in front of a port where nothing listens: its answers are 502s, so the
    failure-only series exist (the 5xx ratio panel divides by them) without breaking the
    session's stack, and without counting on a 503 some earlier request happened to get."""
    process, url = start_gateway(
        logs_dir,
        f"http://127.0.0.1:{free_port()}",
        redis_url,
        trained_registry,
        api_token,
        name="gateway-without-predictor",
    )
    yield url
    process.stop()


@pytest.fixture(scope="module")
def prometheus(
    logs_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    predictor_url: str,
    gateway_url: str,
    gateway_without_predictor: str,
    exporters: dict[str, str],
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    targets = {
        "predictor": [predictor_url.removeprefix("http://")],
        "gateway": [
            gateway_url.removeprefix("http://"),
            gateway_without_predictor.removeprefix("http://"),
        ],
        **{job: [target] for job, target in exporters.items()},
    }
    port = free_port()
    process = ManagedProcess(
        "prometheus",
        [
            "prometheus",
            f"--config.file={prometheus_config(targets, folder)}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        logs_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(http_ok(f"{url}/-/ready"), 30, "prometheus", process)
        yield url
    finally:
        process.stop()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10, verify=tls_context()
    )
    body = response.json()
    assert body.get("status") == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def exported(prometheus: str, selector: Any) -> bool:
    """Whether a failure-only series is one the stack exports (ALERTS is Prometheus's own)."""
    if selector.name == "ALERTS" or selector.name in PROVEN_ELSEWHERE:
        return True
    response = httpx.get(f"{prometheus}/api/v1/metadata", params={"metric": selector.name})
    return bool(response.json()["data"])


def failure_only(selector: Any) -> bool:
    return without_offset(selector) in FAILURE_ONLY


def drive_traffic(
    gateway_url: str, predictor_url: str, api_token: str, trained_registry: str
) -> None:
    """What the panels show: answers, labels, jobs (one failing), a challenger in the shadow,
    drift scores."""
    headers = {"Authorization": f"Bearer {api_token}"}
    for _ in range(20):
        httpx.post(f"{gateway_url}/predict", json=SETOSA)
    httpx.post(f"{gateway_url}/predict/batch", json={"instances": [SETOSA, VIRGINICA] * 100})
    answers = [httpx.post(f"{gateway_url}/predict", json=VIRGINICA).json() for _ in range(5)]
    for answer in answers:
        label = {"request_id": answer["request_id"], "actual_species": "Iris-virginica"}
        wait_until(
            lambda label=label: (
                httpx.post(f"{gateway_url}/feedback", json=label, headers=headers).status_code
                in (202, 409)
            ),
            10,
            "feedback accepted",
        )

    jobs = [
        httpx.post(f"{gateway_url}/retrain", json=body, headers=headers).json()["job_id"]
        for body in ({}, {"data_rev": "no-such-revision"})
    ]

    def ended() -> bool:
        records = [
            httpx.get(f"{gateway_url}/jobs/{job}", headers=headers, verify=tls_context())
            for job in jobs
        ]
        return all(record.json()["status"] in ("succeeded", "failed") for record in records)

    wait_until(ended, 300, "both retrain jobs ended")
    # The retrain's version is the challenger if it passed the gate; else make it so.
    client = MlflowClient(trained_registry)
    newest = max(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    client.set_registered_model_alias(MODEL, CHALLENGER, str(newest))

    def shadowed() -> bool:
        httpx.post(f"{gateway_url}/predict/batch", json={"instances": [SETOSA, VIRGINICA] * 5})
        model = httpx.get(f"{gateway_url}/model").json()
        return (model.get("challenger") or {}).get("version") == str(newest)

    wait_until(shadowed, 30, "the challenger in the shadow")
    for _ in range(10):
        httpx.post(f"{gateway_url}/predict/batch", json={"instances": [SETOSA, VIRGINICA] * 5})

    def drift_scored() -> bool:
        # A predictor process scores its own last rows (100 at least) on its first request a
        # second after its last score: which process got the rows above is the kernel's pick.
        httpx.post(f"{gateway_url}/predict/batch", json={"instances": [SETOSA, VIRGINICA] * 50})
        return "iris_feature_drift_psi{" in httpx.get(f"{predictor_url}/metrics").text

    wait_until(drift_scored, 30, "drift scores")


@pytest.fixture
def restored_challenger(trained_registry: str) -> Iterator[None]:
    client = MlflowClient(trained_registry)
    try:
        before: str | None = client.get_model_version_by_alias(MODEL, CHALLENGER).version
    except Exception:
        before = None
    yield
    if before is None:
        client.delete_registered_model_alias(MODEL, CHALLENGER)
    else:
        client.set_registered_model_alias(MODEL, CHALLENGER, before)


def empty_panels(prometheus: str, queries: list[tuple[str, str]]) -> list[str]:
    """Panels without data, but for those that read failure-only series the stack exports."""
    return [
        where
        for where, expr in queries
        if not query(prometheus, expr)
        and not all(failure_only(s) and exported(prometheus, s) for s in selectors(expr))
    ]


def missing_series(prometheus: str) -> list[str]:
    """What the alert rules read and Prometheus has no series (or, failure-only, no metric) of."""
    missing = []
    for where, expr in rule_expressions():
        for selector in selectors(expr):
            if failure_only(selector):
                if not exported(prometheus, selector):
                    missing.append(f"{where}: {selector.name} (not exported)")
            elif not query(prometheus, without_offset(selector)):
                missing.append(f"{where}: {without_offset(selector)}")
    return missing


def loaded_rules(prometheus: str) -> dict[str, dict[str, Any]]:
    groups = httpx.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


def broken_rules(prometheus: str) -> dict[str, str | None]:
    """Rules not evaluated without error (a rule not evaluated yet has health "unknown")."""
    return {
        name: rule.get("lastError")
        for name, rule in loaded_rules(prometheus).items()
        if rule["health"] != "ok"
    }


def test_every_panel_and_every_alert_reads_series_the_real_stack_exports(
    prometheus: str,
    gateway_url: str,
    gateway_without_predictor: str,
    predictor_url: str,
    api_token: str,
    trained_registry: str,
    restored_challenger: None,
) -> None:
    drive_traffic(gateway_url, predictor_url, api_token, trained_registry)
    assert httpx.post(f"{gateway_without_predictor}/predict", json=SETOSA).status_code == 502
    queries = dashboard_queries()

    # Rates need two scrapes after the traffic, rules an evaluation: both come every second.
    # Waits only while something below would fail, then lets the assertions name it.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        empty_panels(prometheus, queries) or missing_series(prometheus) or broken_rules(prometheus)
    ):
        time.sleep(0.5)

    empty = empty_panels(prometheus, queries)
    assert not empty, f"panels without data: {empty}"
    missing = missing_series(prometheus)
    assert not missing, f"alert rules read series the stack does not export: {missing}"
    defined = {where.split(": ", 1)[1] for where, _ in rule_expressions()}
    assert defined <= set(loaded_rules(prometheus))
    assert not broken_rules(prometheus)
