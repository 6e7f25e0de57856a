"""The infrastructure files: linters and promtool pass, and compose wires what a user relies on.

Each checker of infra/checks/lint_infra.sh is one test here, so a failure names what broke.
promtool is required, not optional: without it the alert rules would go unchecked, so its
absence fails with the command that installs it.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from iris_devstack.processes import (
    REPO_ROOT,
    VENV_BIN,
    ManagedProcess,
    free_port,
    http_ok,
    wait_until,
)
from iris_devstack.stack import DEFAULTS
from iris_devstack.supervisor import supervisord_command
from iris_trainer.config import WorkerSettings
from tests.support.core import JOBS_NAMESPACE
from tests.support.worker import RunningFlower

PROMETHEUS_DIR = REPO_ROOT / "infra/prometheus"
GRAFANA_DIR = REPO_ROOT / "infra/grafana"
INSTALL_HINT = (
    "is not on PATH. Install it with `sudo apt-get install -y prometheus` (Debian/Ubuntu; "
    "CI does this) or from https://prometheus.io/download/."
)


def prometheus_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} {INSTALL_HINT}", pytrace=False)
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )


def assert_passes(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())


def dockerfile_of(service: dict[str, Any]) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    return REPO_ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")


def alert_names() -> set[str]:
    names = set()
    for path in (PROMETHEUS_DIR / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["alert"] for rule in group["rules"] if "alert" in rule)
    return names


# --- the checkers of lint_infra.sh (each a process: marked integration) -----------------


def dockerfiles() -> list[Path]:
    """The Python services' shared Dockerfile and MLflow's."""
    return [REPO_ROOT / "services" / "Dockerfile", *REPO_ROOT.glob("services/*/Dockerfile")]


PYTHON_SERVICES = ("predictor", "gateway", "trainer")


@pytest.mark.integration
def test_dockerfiles_pass_hadolint() -> None:
    assert_passes(run(VENV_BIN / "hadolint", *dockerfiles()), "hadolint")


def test_each_python_service_has_its_own_image_stage() -> None:
    text = (REPO_ROOT / "services" / "Dockerfile").read_text()
    built = {
        name: service["build"]
        for name, service in compose()["services"].items()
        if service.get("build", {}).get("dockerfile") == "services/Dockerfile"
    }
    assert set(built) == set(PYTHON_SERVICES)
    for name, build in built.items():
        assert f"AS {name}\n" in text
        assert build["target"] == name
        assert build["args"]["SERVICE"] == name


@pytest.mark.integration
def test_compose_file_follows_the_compose_specification() -> None:
    result = run(
        VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml"
    )
    assert_passes(result, "check-jsonschema (compose spec) on compose.yaml")


@pytest.mark.integration
def test_workflows_follow_the_github_actions_schema() -> None:
    workflows = sorted((REPO_ROOT / ".github/workflows").glob("*.yml"))
    assert workflows, "no workflow in .github/workflows"
    result = run(
        VENV_BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows
    )
    assert_passes(result, "check-jsonschema (GitHub workflows)")


@pytest.mark.integration
def test_prometheus_configs_and_their_rule_files_load() -> None:
    promtool = prometheus_tool("promtool")
    configs = [PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus.local.yml"]
    result = run(promtool, "check", "config", *configs)
    assert_passes(result, "promtool check config")
    # rule_files resolve relative to the config: a glob that matches nothing is not an error
    # for promtool, so make sure the rules were really found.
    found = [int(count) for count in re.findall(r"(\d+) rule files found", result.stdout)]
    assert len(found) == len(configs), result.stdout
    assert all(count > 0 for count in found), f"a config loads no rule file:\n{result.stdout}"


@pytest.mark.integration
def test_alert_rules_are_valid() -> None:
    promtool = prometheus_tool("promtool")
    rules = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
    assert_passes(run(promtool, "check", "rules", *rules), "promtool check rules")


@pytest.mark.integration
def test_alert_rule_unit_tests_pass() -> None:
    promtool = prometheus_tool("promtool")
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert_passes(run(promtool, "test", "rules", *tests), "promtool test rules")


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = alert_names()
    assert alerts - fired == set(), f"alerts never shown to fire: {sorted(alerts - fired)}"
    assert alerts - silent == set(), f"alerts never shown to stay quiet: {sorted(alerts - silent)}"


def test_every_alert_says_how_bad_and_where_to_look() -> None:
    for path in (PROMETHEUS_DIR / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in (rule for rule in group["rules"] if "alert" in rule):
                name = rule["alert"]
                assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
                annotations = rule.get("annotations", {})
                missing = {"summary", "description", "runbook_url"} - annotations.keys()
                assert not missing, f"{name} lacks annotations {sorted(missing)}"
                anchor = annotations["runbook_url"].partition("#")[2]
                readme = (REPO_ROOT / "infra/README.md").read_text().lower()
                assert f"### {anchor}" in readme, f"{name}: no runbook section '### {anchor}'"


@pytest.mark.integration
def test_dashboard_and_rules_query_only_metrics_the_services_export() -> None:
    result = run(VENV_BIN / "python", "infra/checks/check_promql.py")
    assert_passes(result, "infra/checks/check_promql.py")


# --- Prometheus itself ---------------------------------------------------------------


@pytest.fixture
def local_prometheus(tmp_path: Path) -> Iterator[str]:
    binary = prometheus_tool("prometheus")
    port = free_port()
    process = ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={PROMETHEUS_DIR / 'prometheus.local.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path,
        cwd=tmp_path,  # rule_files must resolve against the config, not the working folder
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200,
            30,
            "prometheus",
            process,
        )
        yield url
    finally:
        process.stop()


@pytest.mark.integration
def test_local_prometheus_loads_every_alert(local_prometheus: str) -> None:
    groups = httpx.get(f"{local_prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == alert_names(), f"Prometheus loaded {sorted(loaded)}"


# --- compose: what a user of `docker compose up` relies on ---------------------------


def has_healthcheck(name: str, service: dict[str, Any]) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    dockerfile = dockerfile_of(service)
    return dockerfile is not None and "\nHEALTHCHECK " in dockerfile.read_text()


def is_one_shot_job(service: dict[str, Any]) -> bool:
    # Done when it exits (compose's bootstrap): nothing waits for it to be healthy.
    return service.get("restart") == "no" and "command" in service


def test_every_compose_service_has_a_healthcheck() -> None:
    services = compose()["services"]
    missing = [
        name
        for name, service in services.items()
        if not is_one_shot_job(service) and not has_healthcheck(name, service)
    ]
    assert not missing, f"no healthcheck in compose.yaml or their Dockerfile: {missing}"


def test_no_long_running_service_waits_on_a_one_shot_job() -> None:
    services = compose()["services"]
    jobs = {name for name, service in services.items() if is_one_shot_job(service)}
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if dependency in jobs:
                assert rule.get("condition") == "service_completed_successfully", (
                    f"{name} waits on the one-shot {dependency} without "
                    "condition: service_completed_successfully"
                )


@pytest.mark.parametrize(
    ("service", "dependency"),
    [
        ("mlflow", "postgres"),
        ("trainer", "redis"),
        ("trainer", "mlflow"),
        ("predictor", "mlflow"),
        ("gateway", "predictor"),
        ("gateway", "redis"),
        ("grafana", "prometheus"),
    ],
)
def test_compose_starts_a_service_once_its_dependency_is_healthy(
    service: str, dependency: str
) -> None:
    depends_on = compose()["services"][service].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{service}: depends_on must name a condition"
    condition = depends_on.get(dependency, {}).get("condition")
    assert condition == "service_healthy", (
        f"{service} must wait for {dependency} with condition: service_healthy (got {condition})"
    )


def test_compose_images_run_as_non_root_users() -> None:
    for name, service in compose()["services"].items():
        dockerfile = dockerfile_of(service)
        if dockerfile is None:
            continue
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
        assert users, f"{dockerfile}: no USER, {name} would run as root"
        assert users[-1].split(":")[0] not in {"root", "0"}, f"{dockerfile}: runs as root"


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            included = negated
    return included


def test_docker_build_context_holds_what_the_images_copy_and_no_secrets() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for dockerfile in dockerfiles():
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
                continue
            for copied in (w for w in words[1:-1] if not w.startswith("--")):
                # The shared Dockerfile copies a path per service (build argument SERVICE).
                for source in {copied.replace("${SERVICE}", s) for s in PYTHON_SERVICES}:
                    assert (REPO_ROOT / source).exists(), f"{dockerfile}: COPY {source}: missing"
                    assert dockerignore_includes(source, patterns), (
                        f"{dockerfile}: COPY {source} is excluded by .dockerignore"
                    )
    for secret in (".env", ".git/config", ".dvc/config.local", ".venv/bin/python"):
        assert not dockerignore_includes(secret, patterns), f".dockerignore lets {secret} in"


def test_compose_variables_are_documented_in_env_example() -> None:
    text = (REPO_ROOT / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    documented = set(
        re.findall(
            r"^#?\s*([A-Z][A-Z0-9_]*)=",
            (REPO_ROOT / ".env.example").read_text(),
            flags=re.MULTILINE,
        )
    )
    assert used - documented == set(), (
        f"compose.yaml reads {sorted(used - documented)}, which .env.example does not document"
    )


def test_gateway_reads_its_api_token_from_a_secret_file_only() -> None:
    # The token is a file compose mounts (a missing file stops compose), never a variable
    # that `docker inspect` shows; the gateway itself refuses an empty or placeholder token.
    definition = compose()
    gateway = definition["services"]["gateway"]
    names = {item if isinstance(item, str) else item["source"] for item in gateway["secrets"]}
    assert "api_token" in names
    assert "API_TOKEN" not in (gateway.get("environment") or {})
    env_file = (REPO_ROOT / "infra/env/gateway.env").read_text()
    assert not re.search(r"^API_TOKEN=", env_file, flags=re.MULTILINE)
    assert re.search(r"^SECRETS_DIR=/run/secrets$", env_file, flags=re.MULTILINE)
    assert definition["secrets"]["api_token"]["file"].endswith("/api_token")


def test_compose_mounts_monitoring_config_where_prometheus_and_grafana_read_it() -> None:
    services = compose()["services"]

    def mounts(name: str) -> dict[str, str]:
        pairs = (volume.split(":")[:2] for volume in services[name].get("volumes", []))
        return {target: source for source, target in pairs}

    prometheus = mounts("prometheus")
    assert prometheus.get("/etc/prometheus") == "./infra/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    grafana = mounts("grafana")
    assert grafana.get("/etc/grafana/provisioning") == "./infra/grafana/provisioning"
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/dashboards/dashboards.yml").read_text()
    )["providers"]
    for provider in providers:
        assert grafana.get(provider["options"]["path"]) == "./infra/grafana/dashboards", (
            f"Grafana reads dashboards from {provider['options']['path']}, which compose does "
            "not mount from infra/grafana/dashboards"
        )

    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090", "Grafana cannot reach Prometheus"


def test_dashboard_has_the_panels_the_readme_promises() -> None:
    dashboard = json.loads((GRAFANA_DIR / "dashboards/iris-mlops.json").read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for metric in (
        "http_request_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "iris_predictions_total",
        "iris_model_info",
        "iris_model_reloads_total",
        "iris_feature_value_cm_bucket",
        "iris_gateway_upstream_errors_total",
    ):
        assert metric in exprs, f"no dashboard panel reads {metric}"


# --- monitoring: Alertmanager, the jobs' exporters, the dashboard ---------------------------

ALERTMANAGER_CONFIG = REPO_ROOT / "infra/alertmanager/alertmanager.yml"


def alert_rule_tests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted((PROMETHEUS_DIR / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                yield path, check


def matcher_alert_names(matchers: list[str]) -> set[str]:
    """The alert names an Alertmanager matcher list selects (`alertname="A"`, `=~"A|B"`)."""
    names: set[str] = set()
    for matcher in matchers:
        found = re.fullmatch(r'alertname(=~?)"([^"]*)"', matcher.replace(" ", ""))
        if found:
            names.update(found.group(2).split("|") if found.group(1) == "=~" else [found[2]])
    return names


def script_module(relative: str) -> Any:
    """A script of the repository (its folder is no package) as a module."""
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def known_metrics() -> Any:
    """infra/checks/check_promql.py as a module: its hand-kept lists of exported names."""
    return script_module("infra/checks/check_promql.py")


def test_every_alert_rule_test_names_an_alert_that_exists() -> None:
    # A test of a removed or renamed alert that expects silence passes for ever, proving nothing.
    alerts = alert_names()
    stale = {
        (path.name, check["alertname"])
        for path, check in alert_rule_tests()
        if check["alertname"] not in alerts
    }
    assert not stale, f"alert_rule_test names alerts no rule defines: {sorted(stale)}"


@pytest.mark.integration
def test_alertmanager_config_passes_amtool() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail(
            "amtool is not on PATH. Install it with `sudo apt-get install -y "
            "prometheus-alertmanager` (Debian/Ubuntu) or from https://prometheus.io/download/.",
            pytrace=False,
        )
    assert_passes(run(amtool, "check-config", ALERTMANAGER_CONFIG), "amtool check-config")
    receivers = {
        receiver["name"]: receiver
        for receiver in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["receivers"]
    }
    for severity in ("critical", "warning"):
        routed = run(
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"severity={severity}",
            "alertname=AnyAlert",
        )
        assert_passes(routed, f"amtool config routes test severity={severity}")
        receiver = routed.stdout.strip()
        assert receivers.get(receiver, {}).get("webhook_configs"), (
            f"a {severity} alert goes to {receiver!r}, which has no webhook"
        )


def test_alertmanager_inhibitions_name_alerts_that_exist() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    named = set()
    for rule in config.get("inhibit_rules", []):
        named |= matcher_alert_names(rule.get("source_matchers", []))
        named |= matcher_alert_names(rule.get("target_matchers", []))
    assert named, "no inhibition names an alert: has the matcher syntax changed?"
    assert named <= alert_names(), f"inhibitions name unknown alerts: {named - alert_names()}"


def test_prometheus_sends_alerts_to_alertmanager_and_scrapes_the_job_exporters() -> None:
    def scrape_targets(config: dict[str, Any]) -> dict[str, list[str]]:
        return {
            job["job_name"]: [t for c in job.get("static_configs", []) for t in c["targets"]]
            for job in config["scrape_configs"]
        }

    def alertmanagers(config: dict[str, Any]) -> list[str]:
        managers = config["alerting"]["alertmanagers"]
        return [t for m in managers for c in m["static_configs"] for t in c["targets"]]

    services = compose()["services"]
    in_compose = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert alertmanagers(in_compose) == ["alertmanager:9093"]
    assert "alertmanager" in services
    targets = scrape_targets(in_compose)
    assert targets["flower"] == ["flower:5555"]
    assert "--port=5555" in services["flower"]["command"]
    assert targets["redis-exporter"] == ["redis-exporter:9121"]
    assert "redis-exporter" in services

    local = yaml.safe_load((PROMETHEUS_DIR / "prometheus.local.yml").read_text())
    assert alertmanagers(local) == [f"127.0.0.1:{DEFAULTS['STACK_ALERTMANAGER_PORT']}"]
    targets = scrape_targets(local)
    assert targets["flower"] == [f"127.0.0.1:{DEFAULTS['STACK_FLOWER_PORT']}"]
    assert targets["redis-exporter"] == [f"127.0.0.1:{DEFAULTS['STACK_REDIS_EXPORTER_PORT']}"]


def test_flower_and_alertmanager_have_no_auth_so_they_listen_on_loopback_only() -> None:
    services = compose()["services"]
    for name in ("flower", "alertmanager"):
        for published in services[name].get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"compose publishes {name} widely"
    env = {
        "STACK_VENV": ".venv",
        "STACK_ROOT": ".",
        "STACK_STATE": ".state",
        "STACK_FLOWER_PORT": "5555",
        "STACK_ALERTMANAGER_PORT": "9093",
    }
    flower = supervisord_command("flower", **env)
    assert "--address=127.0.0.1" in flower
    # The worker's app, so Flower reads the events under the deployment's key prefix; its log
    # as JSON lines.
    assert flower[1:6] == ["-A", "iris_trainer.flower_app", "--quiet", "flower", "--logging=none"]
    assert "--web.listen-address=127.0.0.1:9093" in supervisord_command("alertmanager", **env)


def test_dashboard_shows_model_quality_training_jobs_and_both_latency_tails() -> None:
    dashboard = json.loads((GRAFANA_DIR / "dashboards/iris-mlops.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    text = " ".join(exprs)
    for metric in (
        "iris_feature_drift_psi",
        "iris_live_accuracy",
        "iris_feedback_total",
        "iris_shadow_predictions_total",
        "iris_shadow_dropped_total",
        "iris_shadow_inference_seconds_bucket",
        "iris_model_age_seconds",
        "iris_model_load_failing",
        "iris_prediction_log_dropped_total",
        "flower_events_total",
        "flower_task_runtime_seconds_bucket",
        "flower_worker_number_of_currently_executing_tasks",
        "redis_key_size",
    ):
        assert metric in text, f"no dashboard panel reads {metric}"
    for quantile in ("0.95", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in expr and "/predict/batch" in expr for expr in exprs
        ), f"no panel shows the {quantile} quantile of /predict and /predict/batch"


def failed_jobs_counted(metrics: str) -> float:
    """flower_events_total of type task-failed, summed over its series."""
    pattern = r'^flower_events_total\{[^}]*type="task-failed"[^}]*\} (\S+)$'
    found = re.findall(pattern, metrics, flags=re.MULTILINE)
    return sum(float(value) for value in found)


@pytest.mark.integration
@pytest.mark.slow
def test_flower_exports_the_workers_job_events_by_the_names_the_rules_read(
    flower: RunningFlower, trainer_worker: ManagedProcess, redis_url: str, logs_dir: Path
) -> None:
    """Flower as supervisord runs it (the session's: see `flower`), beside a real worker."""

    def metrics() -> str:
        return httpx.get(f"{flower.url}/metrics", timeout=5).text

    # Events are published, not queued: only a job sent once Flower sees the worker counts.
    wait_until(
        lambda: 'flower_worker_online{worker="trainer-worker@' in metrics(), 60, "worker seen"
    )
    failed_before = failed_jobs_counted(metrics())
    sent = subprocess.run(
        [
            str(VENV_BIN / "celery"),
            "-A",
            "iris_trainer.celery_app",
            "call",
            "trainer.retrain",
            "--kwargs",
            json.dumps({"params": {"not_a_parameter": 1}}),
        ],
        env={**os.environ, "REDIS_URL": redis_url, "JOBS_NAMESPACE": JOBS_NAMESPACE},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_passes(sent, "celery call trainer.retrain")
    # This job's failure, not an earlier test's: the count must grow.
    wait_until(lambda: failed_jobs_counted(metrics()) > failed_before, 60, "the failed job counted")
    exported = set(re.findall(r"^# TYPE (\S+) ", metrics(), flags=re.MULTILINE))
    listed = known_metrics()
    expected = listed.FLOWER | {name for name in listed.HISTOGRAMS if name.startswith("flower_")}
    assert expected <= exported, f"Flower does not export {sorted(expected - exported)}"
    # Its log is JSON lines, as every service's.
    logged = [line for line in (logs_dir / "flower.log").read_text().splitlines() if line.strip()]
    assert [json.loads(line)["service"] for line in logged] == ["flower"] * len(logged), logged
    assert any("Connected to" in json.loads(line)["message"] for line in logged), logged
    # It counted the jobs without the training pipeline in its memory: no numpy, scikit-learn
    # or pandas extension is mapped into it (Flower imports its app's task modules at start).
    mapped = Path(f"/proc/{flower.pid}/maps").read_text()
    loaded = {name for name in ("numpy", "sklearn", "pandas") if f"/{name}/" in mapped}
    assert not loaded, f"Flower loaded {sorted(loaded)}"


@pytest.mark.integration
def test_redis_exporter_reads_the_queue_length_of_this_namespace(
    tmp_path: Path, redis_url: str
) -> None:
    if shutil.which("prometheus-redis-exporter") is None:
        pytest.fail("prometheus-redis-exporter is missing: run scripts/ensure_tools.sh")
    namespace = f"exporter-{uuid.uuid4().hex[:8]}"
    queue = f"{namespace}:celery:{namespace}.training"
    port = free_port()
    exporter = ManagedProcess(
        "redis-exporter",
        supervisord_command(
            "redis-exporter",
            REDIS_URL=redis_url,
            STACK_REDIS_EXPORTER_PORT=str(port),
            JOBS_NAMESPACE=namespace,
        ),
        tmp_path,
    )
    client = redis.Redis.from_url(redis_url)
    try:
        client.rpush(queue, "job-1", "job-2")
        wait_until(http_ok(f"http://127.0.0.1:{port}/health"), 30, "redis_exporter", exporter)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert f'redis_key_size{{db="db0",key="{queue}"}} 2' in text
        # An empty queue is a key Redis deleted: it still reads 0, not nothing.
        assert f'redis_key_size{{db="db0",key="{namespace}:jobs:pending"}} 0' in text
        assert re.search(r"^redis_up 1$", text, flags=re.MULTILINE)
    finally:
        client.delete(queue)
        client.close()
        exporter.stop()


def test_compose_stops_each_service_after_everything_that_depends_on_it() -> None:
    services = compose()["services"]
    compose_stack = script_module("scripts/compose_stack.py")
    layers = compose_stack.stop_order(services)
    when = {name: number for number, layer in enumerate(layers) for name in layer}
    assert set(when) == set(services)
    for name, spec in services.items():
        for needed in spec.get("depends_on") or ():
            assert when[needed] > when[name], f"{needed} stops before {name}, which needs it"
    # The workers stop while Redis and MLflow still answer (their soft shutdown needs Redis),
    # and get the time to hand a job back before the engine's SIGKILL.
    assert when["trainer"] < min(when["redis"], when["mlflow"])
    soft_shutdown = WorkerSettings.model_fields["soft_shutdown_timeout_s"].default
    assert compose_stack.grace_seconds(services["trainer"]) >= soft_shutdown + 10
