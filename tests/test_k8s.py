"""The Kubernetes manifests (infra/k8s): what they render to, and what the checker refuses.

- Both overlays render and pass every check of infra/checks/check_k8s.py (`make lint`).
- The policy refuses each thing a platform team would refuse, shown on a deliberately bad
  object for each, and the schema checks refuse unknown fields in built-in and custom kinds.
- The configuration is compose's: each service's environment variable names and image are
  read from compose.yaml and infra/env at test time and compared with the rendered
  manifests, so a later change of compose that the manifests miss (or the reverse) fails here.
- The generated objects (PrometheusRule, dashboard) equal their sources, and the vendored
  CRDs are the releases they claim to be.
- KEDA watches the list the jobs really land in: the gateway's own Celery settings publish a
  job to a real Redis, and the ScaledObject's listName is the one list there; the Redis user
  KEDA logs in as runs KEDA's own query on it, and nothing else.
- The scripts the pods run: the workspace's checkout and data, and the bootstrap Job's
  users, first model and grants against a real MLflow with basic-auth, twice.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
import yaml
from dotenv import dotenv_values

from iris_devstack.processes import (
    REPO_ROOT,
    VENV_BIN,
    ManagedProcess,
    child_env,
    free_port,
    http_ok,
    tcp_open,
    wait_until,
)
from iris_shared.jobs import RETRAIN_TASK, JobKeys

K8S_DIR = REPO_ROOT / "infra/k8s"
ENV_DIR = REPO_ROOT / "infra/env"
COMPOSE = REPO_ROOT / "compose.yaml"

# Services whose settings are an env file of infra/env (the contract): compose service name ->
# the Kubernetes Deployment and container that run it.
CONFIGURED_SERVICES = ("predictor", "gateway", "trainer", "flower", "mlflow")

# Names only Kubernetes sets, and why; each must still be used (a stale entry fails too).
KUBERNETES_ONLY = {
    # os.cpu_count() counts the node's cores: one server process per core of the CPU limit.
    "predictor": {"PREDICTOR_WORKERS"},
    "gateway": {"GATEWAY_WORKERS"},
    "mlflow": {
        # compose passes --artifacts-destination; a setting here, so prod can name a bucket.
        "MLFLOW_ARTIFACTS_DESTINATION",
        # Read by MLflow and libpq from the environment only; from Secrets, never in a file.
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "PGPASSWORD",
    },
}
# Per overlay, on top: prod's bucket credentials file (components/mlflow-artifacts-s3).
KUBERNETES_ONLY_BY_OVERLAY = {"prod": {"mlflow": {"AWS_SHARED_CREDENTIALS_FILE"}}}


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    return load_module(REPO_ROOT / "infra/checks/check_k8s.py")


@pytest.fixture(scope="module")
def rendered(checker: ModuleType) -> dict[str, list[dict[str, Any]]]:
    return {overlay: checker.render(overlay) for overlay in checker.OVERLAYS}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"{kind}/{name} is not rendered")


def container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    deployment = find(objects, "Deployment", name)
    (match,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return match


# ---------------------------------------------------------------- the whole check


@pytest.mark.integration
def test_both_overlays_render_and_pass_every_check() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "infra/checks/check_k8s.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "dev" in result.stdout
    assert "prod" in result.stdout


# ---------------------------------------------------------------- policy on bad objects

LABELS = {"app.kubernetes.io/name": "gateway"}


def good_objects() -> list[dict[str, Any]]:
    """The least a workload needs to pass: a Deployment, its Service, an Ingress to it, the
    default-deny NetworkPolicy and one of its own."""
    secure = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    probe = {"httpGet": {"path": "/healthz", "port": 8002}}
    resources = {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "128Mi"},
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gateway"},
            "spec": {
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "terminationGracePeriodSeconds": 30,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "initContainers": [
                            {
                                "name": "init",
                                "image": "iris-mlops/gateway:1",
                                "resources": copy.deepcopy(resources),
                                "securityContext": dict(secure),
                            }
                        ],
                        "containers": [
                            {
                                "name": "gateway",
                                "image": "iris-mlops/gateway:1",
                                "resources": copy.deepcopy(resources),
                                "securityContext": dict(secure),
                                "livenessProbe": dict(probe),
                                "readinessProbe": dict(probe),
                                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "gateway"},
            "spec": {"selector": LABELS, "ports": [{"port": 8002}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "predictor"},
            "spec": {"selector": {"app.kubernetes.io/name": "predictor"}, "ports": [{"port": 1}]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "gateway"},
            "spec": {
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": "gateway", "port": {}}},
                                }
                            ]
                        }
                    }
                ]
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "gateway"},
            "spec": {
                "podSelector": {
                    "matchExpressions": [
                        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["gateway"]}
                    ]
                },
                "policyTypes": ["Ingress"],
            },
        },
    ]


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objects[0]["spec"]["template"]["spec"]
    return spec


def main_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = pod(objects)["containers"][0]
    return found


def without_limits(objects: list[dict[str, Any]]) -> None:
    del main_container(objects)["resources"]["limits"]


def init_without_requests(objects: list[dict[str, Any]]) -> None:
    del pod(objects)["initContainers"][0]["resources"]["requests"]


def without_liveness(objects: list[dict[str, Any]]) -> None:
    del main_container(objects)["livenessProbe"]


def served_without_readiness(objects: list[dict[str, Any]]) -> None:
    del main_container(objects)["readinessProbe"]


def as_root(objects: list[dict[str, Any]]) -> None:
    main_container(objects)["securityContext"]["runAsUser"] = 0


def root_allowed(objects: list[dict[str, Any]]) -> None:
    del pod(objects)["securityContext"]["runAsNonRoot"]


def writable_root(objects: list[dict[str, Any]]) -> None:
    del main_container(objects)["securityContext"]["readOnlyRootFilesystem"]


def capabilities_kept(objects: list[dict[str, Any]]) -> None:
    main_container(objects)["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}


def escalation_allowed(objects: list[dict[str, Any]]) -> None:
    main_container(objects)["securityContext"]["allowPrivilegeEscalation"] = True


def no_seccomp(objects: list[dict[str, Any]]) -> None:
    del pod(objects)["securityContext"]["seccompProfile"]


def token_mounted(objects: list[dict[str, Any]]) -> None:
    del pod(objects)["automountServiceAccountToken"]


def service_links(objects: list[dict[str, Any]]) -> None:
    pod(objects)["enableServiceLinks"] = True


def grace_too_short(objects: list[dict[str, Any]]) -> None:
    pod(objects)["terminationGracePeriodSeconds"] = 12


def secret_with_data(objects: list[dict[str, Any]]) -> None:
    objects.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "eA=="}}
    )


def secret_with_string_data(objects: list[dict[str, Any]]) -> None:
    objects.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"k": "x"}}
    )


def ingress_to_predictor(objects: list[dict[str, Any]]) -> None:
    objects[3]["spec"]["defaultBackend"] = {"service": {"name": "predictor", "port": {}}}


def node_port(objects: list[dict[str, Any]]) -> None:
    objects[2]["spec"]["type"] = "NodePort"


def no_own_network_policy(objects: list[dict[str, Any]]) -> None:
    del objects[5]


def no_default_deny(objects: list[dict[str, Any]]) -> None:
    del objects[4]


BAD = {
    without_limits: "container gateway: no cpu limit",
    init_without_requests: "init container init: no cpu request",
    without_liveness: "no liveness probe",
    served_without_readiness: "behind a Service but no readiness probe",
    as_root: "may run as root",
    root_allowed: "may run as root",
    writable_root: "root filesystem is writable",
    capabilities_kept: "capabilities not dropped",
    escalation_allowed: "allowPrivilegeEscalation",
    no_seccomp: "no seccomp profile",
    token_mounted: "mounts a service-account token",
    service_links: "enableServiceLinks",
    grace_too_short: "terminationGracePeriodSeconds 12 is not longer",
    secret_with_data: "Secret/x: holds values",
    secret_with_string_data: "Secret/x: holds values",
    ingress_to_predictor: "exposes predictor",
    node_port: "Service/predictor: exposed outside the cluster",
    no_own_network_policy: "Deployment/gateway: no NetworkPolicy selects its pods",
    no_default_deny: "no default-deny NetworkPolicy",
}


def test_the_policy_passes_a_good_workload(checker: ModuleType) -> None:
    assert checker.policy_problems(good_objects(), drains={"gateway": 10}) == []


@pytest.mark.parametrize("spoil", list(BAD), ids=[spoil.__name__ for spoil in BAD])
def test_the_policy_refuses_a_bad_workload(
    checker: ModuleType, spoil: Callable[[list[dict[str, Any]]], None]
) -> None:
    objects = good_objects()
    spoil(objects)
    problems = checker.policy_problems(objects, drains={"gateway": 10})
    assert any(BAD[spoil] in problem for problem in problems), problems


def test_prod_refuses_an_image_without_a_fixed_version(checker: ModuleType) -> None:
    objects = good_objects()
    main_container(objects)["image"] = "iris-mlops/gateway:latest"
    assert checker.policy_problems(objects, drains={}) == []
    assert any(
        "has no fixed version" in problem
        for problem in checker.policy_problems(objects, drains={}, pinned_images=True)
    )


def test_the_drains_are_the_services_own(checker: ModuleType) -> None:
    from iris_gateway.config import GatewaySettings
    from iris_trainer.config import WorkerSettings

    drains = checker.service_drains()
    assert drains["gateway"] == GatewaySettings.model_fields["graceful_shutdown_s"].default
    assert drains["trainer"] == WorkerSettings.model_fields["soft_shutdown_timeout_s"].default


@pytest.mark.integration
def test_every_rendered_workload_is_one_the_policy_sees(
    checker: ModuleType, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    # A workload kind the policy does not know would pass unseen.
    known = {*checker.POD_OWNERS, "CronJob", "Pod"}
    for objects in rendered.values():
        kinds = {obj["kind"] for obj in objects if "template" in obj.get("spec", {})}
        assert kinds <= known


# ---------------------------------------------------------------- schemas


@pytest.mark.integration
def test_schemas_refuse_unknown_and_missing_fields(
    checker: ModuleType, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered["dev"]
    cases = []
    deployment = copy.deepcopy(find(objects, "Deployment", "gateway"))
    deployment["spec"]["replica"] = 2
    cases.append((deployment, "replica"))
    scaled = copy.deepcopy(find(objects, "ScaledObject", "trainer"))
    scaled["spec"]["minReplicas"] = 1
    cases.append((scaled, "minReplicas"))
    scaled = copy.deepcopy(find(objects, "ScaledObject", "trainer"))
    del scaled["spec"]["scaleTargetRef"]
    cases.append((scaled, "scaleTargetRef"))
    monitor = copy.deepcopy(find(objects, "ServiceMonitor", "predictor"))
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    cases.append((monitor, "scrapeEvery"))
    rules = copy.deepcopy(find(objects, "PrometheusRule", "iris-mlops-training"))
    del rules["spec"]["groups"][0]["rules"][0]["expr"]
    cases.append((rules, "expr"))
    for obj, field in cases:
        assert checker.schema_problems(find(objects, obj["kind"], obj["metadata"]["name"])) == []
        problems = checker.schema_problems(obj)
        assert any(field in problem for problem in problems), (obj["kind"], problems)


def test_a_kind_without_any_schema_is_refused(checker: ModuleType) -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in checker.schema_problems(obj)[0]


def test_the_vendored_crds_are_the_releases_they_name(
    checker: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = checker.vendored_crds()
    assert {source["file"] for source in sources} == {
        path.name for path in (K8S_DIR / "crds").glob("*.yaml") if path.name != "sources.yaml"
    }
    for source in sources:
        assert source["version"] in source["url"]
        assert source["url"].endswith(source["file"])
    assert checker.vendored_crd_problems() == []
    # An edited copy is caught.
    shutil.copytree(K8S_DIR / "crds", tmp_path / "crds")
    edited = tmp_path / "crds" / sources[0]["file"]
    edited.write_text(edited.read_text() + "# local edit\n")
    monkeypatch.setattr(checker, "CRDS_DIR", tmp_path / "crds")
    assert sources[0]["file"] in checker.vendored_crd_problems()[0]


# ---------------------------------------------------------------- the same configuration


def env_file_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(line.split("=", 1)[0].strip())
    return names


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def compose_env_names(service: str) -> set[str]:
    """The names compose gives a service: its env files of infra/env and its `environment:`.
    The optional `.env` is each user's local overrides (make up writes one), not a list of the
    deployment's settings."""
    spec = compose_services()[service]
    names: set[str] = set()
    env_files = spec.get("env_file") or []
    for entry in [env_files] if isinstance(env_files, (str, dict)) else env_files:
        path = (REPO_ROOT / (entry if isinstance(entry, str) else entry["path"])).resolve()
        if path.parent == ENV_DIR:
            names |= env_file_names(path)
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        names |= {item.split("=", 1)[0] for item in environment}
    else:
        names |= set(environment)
    return names


def manifest_env_names(objects: list[dict[str, Any]], service: str) -> set[str]:
    main = container(objects, service)
    names = {variable["name"] for variable in main.get("env") or []}
    for source in main.get("envFrom") or []:
        config_map = find(objects, "ConfigMap", source["configMapRef"]["name"])
        names |= set(config_map.get("data") or {})
    return names


@pytest.mark.integration
@pytest.mark.parametrize("overlay", ["dev", "prod"])
@pytest.mark.parametrize("service", CONFIGURED_SERVICES)
def test_each_service_gets_the_variables_compose_gives_it(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, service: str
) -> None:
    only_here = KUBERNETES_ONLY.get(service, set()) | KUBERNETES_ONLY_BY_OVERLAY.get(
        overlay, {}
    ).get(service, set())
    in_manifests = manifest_env_names(rendered[overlay], service)
    assert only_here <= in_manifests, f"stale KUBERNETES_ONLY entries: {only_here - in_manifests}"
    in_compose = compose_env_names(service)
    assert not only_here & in_compose, "compose sets these now: drop them from KUBERNETES_ONLY"
    assert in_manifests - only_here == in_compose, (
        f"only in the manifests: {sorted(in_manifests - only_here - in_compose)}; "
        f"only in compose: {sorted(in_compose - in_manifests)}"
    )


def test_each_env_file_is_a_configmap_of_the_kustomization() -> None:
    kustomization = yaml.safe_load((ENV_DIR / "kustomization.yaml").read_text())
    generated = {entry["name"]: entry["envs"] for entry in kustomization["configMapGenerator"]}
    files = sorted(path.name for path in ENV_DIR.glob("*.env"))
    assert sorted(env for envs in generated.values() for env in envs) == files
    for name, envs in generated.items():
        assert envs == [f"{name.removesuffix('-env')}.env"]


@pytest.mark.integration
@pytest.mark.parametrize("service", CONFIGURED_SERVICES)
def test_each_service_runs_the_image_compose_builds(
    rendered: dict[str, list[dict[str, Any]]], service: str
) -> None:
    compose_image = compose_services()[service]["image"]
    repository, _, tag = compose_image.rpartition(":")
    dev_image = container(rendered["dev"], service)["image"]
    assert dev_image.rpartition(":")[0] == repository
    # prod pulls the same image, renamed to the registry's, at a fixed version.
    prod_image = container(rendered["prod"], service)["image"]
    assert prod_image.rpartition(":")[0].endswith("/" + repository)
    if tag != "latest":
        assert dev_image == compose_image
        assert prod_image.endswith(f":{tag}")


@pytest.mark.integration
def test_flower_runs_compose_s_command(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert (
        container(rendered["dev"], "flower")["command"] == compose_services()["flower"]["command"]
    )


# ---------------------------------------------------------------- generated objects


@pytest.mark.integration
def test_the_prometheus_rules_are_the_rule_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    rules = {
        obj["metadata"]["name"]: obj["spec"]["groups"]
        for obj in rendered["prod"]
        if obj["kind"] == "PrometheusRule"
    }
    sources = sorted((REPO_ROOT / "infra/prometheus/rules").glob("*.yml"))
    assert len(rules) == len(sources)
    for path in sources:
        name = path.stem if path.stem.startswith("iris-mlops") else f"iris-mlops-{path.stem}"
        assert rules[name] == yaml.safe_load(path.read_text())["groups"]


@pytest.mark.integration
def test_the_dashboard_is_the_dashboard_file(rendered: dict[str, list[dict[str, Any]]]) -> None:
    path = REPO_ROOT / "infra/grafana/dashboards/iris-mlops.json"
    config_map = find(rendered["dev"], "ConfigMap", "grafana-dashboard-iris-mlops")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"][path.name] == path.read_text()
    assert json.loads(config_map["data"][path.name])["uid"] == "iris-mlops"


def test_a_changed_rule_makes_the_generated_file_stale(
    checker: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert checker.generated_problems() == []
    generator = load_module(checker.GENERATOR)
    rules = tmp_path / "rules"
    shutil.copytree(REPO_ROOT / "infra/prometheus/rules", rules)
    path = rules / "training.yml"
    path.write_text(path.read_text().replace("for: 15m", "for: 20m", 1))
    monkeypatch.setattr(generator, "RULES_DIR", rules)
    monkeypatch.setattr(checker, "_load", lambda _: generator)
    problems = checker.generated_problems()
    assert len(problems) == 1
    assert "prometheusrules.yaml is out of date" in problems[0]


# ---------------------------------------------------------------- the training queue

# KEDA's redis scaler measures the list with this script (kedacore/keda v2.20.2,
# pkg/scalers/redis_scaler.go), sent with EVAL and the listName as KEYS[1].
KEDA_LIST_LENGTH_SCRIPT = """
    local listName = KEYS[1]
    local listType = redis.call('type', listName).ok
    if listType == 'zset' then
        return redis.call('zcard', listName)
    elseif listType == 'set' then
        return redis.call('scard', listName)
    elseif listType == 'hash' then
        return redis.call('hlen', listName)
    elseif listType == 'list' or listType == 'none' then
        return redis.call('llen', listName)
    else
        return redis.error_reply('ERR unsupported key type: ' .. listType)
    end
"""


def jobs_namespace() -> str:
    (namespace,) = {
        line.split("=", 1)[1].strip()
        for path in ENV_DIR.glob("*.env")
        for line in path.read_text().splitlines()
        if line.startswith("JOBS_NAMESPACE=")
    }
    return namespace


def trigger(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = find(objects, "ScaledObject", "trainer")["spec"]["triggers"]
    assert only["type"] == "redis"
    found: dict[str, Any] = only
    return found


@pytest.fixture(scope="module")
def acl_redis(logs_dir: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """A Redis with the ACL file the in-cluster Redis's init container writes."""
    from iris_devstack.redis import redis_server_args
    from iris_shared.redis_acl import USERS

    acl_script = load_module(K8S_DIR / "components/in-cluster-redis/redis_acl.py")
    passwords = {user: secrets.token_urlsafe(16) for user in (*USERS, acl_script.KEDA_USER)}
    acl = logs_dir / "k8s-users.acl"
    acl.write_text(acl_script.users_acl(jobs_namespace(), passwords))
    port = free_port()
    data_dir = logs_dir / f"redis-k8s-{port}"
    data_dir.mkdir()
    process = ManagedProcess(
        f"redis-k8s-{port}", [*redis_server_args(port, data_dir), "--aclfile", str(acl)], logs_dir
    )
    wait_until(tcp_open(port), 15, "redis", process)
    yield port, passwords
    process.stop()


@pytest.mark.integration
def test_keda_watches_the_list_the_gateway_queues_jobs_in(
    rendered: dict[str, list[dict[str, Any]]],
    acl_redis: tuple[int, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from iris_gateway.app import create_celery
    from iris_gateway.config import GatewaySettings

    port, passwords = acl_redis
    namespace = jobs_namespace()
    keys = JobKeys(namespace)
    for overlay in ("dev", "prod"):
        assert trigger(rendered[overlay])["metadata"]["listName"] == keys.broker_prefix + keys.queue

    monkeypatch.setenv("API_TOKEN", secrets.token_urlsafe(32))
    monkeypatch.setenv("REDIS_URL", f"redis://gateway@127.0.0.1:{port}/0")
    monkeypatch.setenv("REDIS_PASSWORD", passwords["gateway"])
    monkeypatch.setenv("JOBS_NAMESPACE", namespace)
    celery = create_celery(GatewaySettings())
    celery.send_task(RETRAIN_TASK, kwargs={}, task_id="k8s-keda", queue=keys.queue, retry=False)
    celery.close()

    admin = redis.Redis(port=port, username="admin", password=passwords["admin"])
    lists = [key for key in admin.scan_iter("*") if admin.type(key) == b"list"]
    # No priority: no "<queue>\x06\x16<step>" list beside it, so one trigger sees every job.
    assert lists == [trigger(rendered["dev"])["metadata"]["listName"].encode()]

    keda = redis.Redis(port=port, username="keda", password=passwords["keda"])
    list_name = trigger(rendered["dev"])["metadata"]["listName"]
    assert keda.eval(KEDA_LIST_LENGTH_SCRIPT, 1, list_name) == 1
    with pytest.raises(redis.exceptions.ResponseError):
        keda.eval("return redis.call('lpush', KEYS[1], 'x')", 1, list_name)
    with pytest.raises(redis.exceptions.NoPermissionError):
        keda.eval(KEDA_LIST_LENGTH_SCRIPT, 1, keys.pending)
    with pytest.raises(redis.exceptions.NoPermissionError):
        keda.get(keys.record("k8s-keda"))
    admin.delete(list_name)


# ---------------------------------------------------------------- the pods' scripts


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repository like the user's: the checkout's DVC setup and data pointer, tagged."""
    origin = tmp_path_factory.mktemp("origin")
    for relative in (".dvc/config", ".dvc/.gitignore", "data/iris.csv.dvc", "params.yaml"):
        (origin / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / relative, origin / relative)
    git("init", "--quiet", "--initial-branch", "main", cwd=origin)
    git("add", ".", cwd=origin)
    git(
        "-c", "user.name=t", "-c", "user.email=t@example.invalid",
        "commit", "--quiet", "-m", "data", cwd=origin,
    )  # fmt: skip
    git("tag", "v0.1.0", cwd=origin)
    return origin, git("rev-parse", "HEAD", cwd=origin)


@pytest.mark.integration
@pytest.mark.slow
def test_the_workspace_is_the_tagged_commit_with_its_data(
    upstream: tuple[Path, str], tmp_path: Path
) -> None:
    origin, commit = upstream
    workspace = tmp_path / "workspace"
    workspace.mkdir()  # an emptyDir
    env = child_env(
        GIT_REPOSITORY=f"file://{origin}",
        GIT_REF="v0.1.0",
        TRAINER_REPO_ROOT=str(workspace),
        GIT_REPOSITORY_FILE=str(tmp_path / "absent"),
        DVC_CONFIG_LOCAL_FILE=str(tmp_path / "absent"),
        HOME=str(tmp_path),
    )
    script = [str(VENV_BIN / "python"), str(K8S_DIR / "base/prepare_workspace.py")]
    for _ in range(2):  # a restarted init container keeps what the first run made
        result = subprocess.run(script, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert git("rev-parse", "HEAD", cwd=workspace) == commit
    assert "already a checkout" in result.stderr
    pointer = yaml.safe_load((workspace / "data/iris.csv.dvc").read_text())
    data = (workspace / "data/iris.csv").read_bytes()
    assert hashlib.md5(data, usedforsecurity=False).hexdigest() == pointer["outs"][0]["md5"]
    assert git("status", "--porcelain", "--untracked-files=no", cwd=workspace) == ""


@pytest.fixture(scope="module")
def auth_mlflow(logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow with the basic-auth app, configured as the manifests configure it (SQLite here)."""
    store = tmp_path_factory.mktemp("mlflow-auth")
    config = (K8S_DIR / "base/basic_auth.ini").read_text()
    config = "\n".join(
        f"database_uri = sqlite:///{store}/users.db" if line.startswith("database_uri") else line
        for line in config.splitlines()
    )
    (store / "basic_auth.ini").write_text(config)
    port = free_port()
    process = ManagedProcess(
        "mlflow-basic-auth",
        [
            str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--app-name", "basic-auth",
            "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
            "--artifacts-destination", str(store / "artifacts"),
        ],
        logs_dir,
        env={
            # The server's ConfigMap (infra/env/mlflow.env), with this test's paths.
            **{k: v for k, v in dotenv_values(REPO_ROOT / "infra/env/mlflow.env").items() if v},
            "MLFLOW_AUTH_CONFIG_PATH": str(store / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
        },
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ok(f"{url}/health"), 90, "mlflow", process)
    yield url
    process.stop()


ADMIN_PASSWORD = secrets.token_urlsafe(16)


def job_secrets_dir(
    objects: list[dict[str, Any]], secret_values: dict[str, dict[str, str]], folder: Path
) -> Path:
    """SECRETS_DIR as the bootstrap Job's projected volume lays it out, from these values."""
    job = find(objects, "Job", "bootstrap")
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"]
    folder.mkdir()
    for source in volume["projected"]["sources"]:
        values = secret_values[source["secret"]["name"]]
        for item in source["secret"]["items"]:
            # kubectl create secret --from-file keeps a file's final newline.
            (folder / item["path"]).write_text(values[item["key"]] + "\n")
    return folder


def run_job_command(
    objects: list[dict[str, Any]], tracking_uri: str, secrets_dir: Path, home: Path
) -> subprocess.CompletedProcess[str]:
    """The Job's command with its ConfigMap's settings, against this MLflow and checkout."""
    job = find(objects, "Job", "bootstrap")
    (main,) = job["spec"]["template"]["spec"]["containers"]
    settings = find(objects, "ConfigMap", main["envFrom"][0]["configMapRef"]["name"])["data"]
    env = child_env(
        **{
            **settings,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "SECRETS_DIR": str(secrets_dir),
            "TRAINER_REPO_ROOT": str(REPO_ROOT),
            "TRAINER_REPORTS_DIR": str(home / "reports"),
            "HOME": str(home),
        }
    )
    command = [str(VENV_BIN / main["command"][0]), *main["command"][1:]]
    # From a folder of its own, as in the pod: a developer's .env (which `make compose-up`
    # fills with passwords) must not override the job's secrets.
    return subprocess.run(
        command, cwd=home, env=env, capture_output=True, text=True, check=False, timeout=300
    )


@pytest.mark.integration
@pytest.mark.slow
def test_the_bootstrap_job_trains_once_and_lets_only_the_gateway_move_aliases(
    rendered: dict[str, list[dict[str, Any]]],
    auth_mlflow: str,
    data_ready: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from iris_shared.registry import DEFAULT_MODEL, PRODUCTION, REGISTERED_MODELS

    passwords = {"admin": ADMIN_PASSWORD}
    passwords |= {user: secrets.token_urlsafe(16) for user in ("trainer", "gateway", "predictor")}
    secrets_dir = job_secrets_dir(
        rendered["dev"], {"iris-mlflow-users": passwords}, tmp_path / "secrets"
    )

    def client_as(user: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords[user])
        return MlflowClient(auth_mlflow)

    def version_counts() -> dict[str, int]:
        reader = client_as("predictor")
        return {
            name: len(reader.search_model_versions(f"name='{name}'")) for name in REGISTERED_MODELS
        }

    first = run_job_command(rendered["dev"], auth_mlflow, secrets_dir, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    production = client_as("predictor").get_model_version_by_alias(DEFAULT_MODEL, PRODUCTION)
    versions = version_counts()
    assert all(count >= 1 for count in versions.values())
    # The gateway may move aliases; the predictor only reads.
    client_as("gateway").set_registered_model_alias(DEFAULT_MODEL, "k8s-test", production.version)
    with pytest.raises(MlflowException):
        client_as("predictor").set_registered_model_alias(
            DEFAULT_MODEL, "k8s-test", production.version
        )

    second = run_job_command(rendered["dev"], auth_mlflow, secrets_dir, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert version_counts() == versions


def secret_names(node: Any) -> Iterator[str]:
    """Every Secret an object refers to: volumes, projected sources, env, TLS, KEDA's auth."""
    if isinstance(node, dict):
        if "secretName" in node:
            yield node["secretName"]
        for key in ("secret", "secretKeyRef"):
            if isinstance(node.get(key), dict) and "name" in node[key]:
                yield node[key]["name"]
        for reference in node.get("secretTargetRef") or []:
            yield reference["name"]
        for value in node.values():
            yield from secret_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from secret_names(item)


@pytest.mark.integration
def test_every_secret_the_manifests_reference_is_documented(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    referenced = {name for objects in rendered.values() for name in secret_names(objects)}
    assert "iris-api-token" in referenced
    missing = sorted(name for name in referenced if name not in section)
    assert not missing, f"Secrets the README's Deploy on Kubernetes section never names: {missing}"
