"""Write the Prometheus Operator's and Grafana's copies of the alert rules and the dashboard.

The rules live in infra/prometheus/rules/*.yml (Prometheus loads them in compose and under
`make up`; promtool tests them) and the dashboard in infra/grafana/dashboards/*.json. In
Kubernetes they travel as objects: a PrometheusRule per rules file, and a ConfigMap per
dashboard with the label Grafana's dashboard sidecar looks for. This writes both into
generated/, which kustomize reads (it cannot read files outside its folder, and has no
generator for custom resources). The output is committed so that `kubectl apply -k` needs
nothing but kubectl; `make lint` runs this with --check and fails when a source changed and
generated/ did not follow.

    python infra/k8s/components/monitoring/generate.py          # rewrite generated/
    python infra/k8s/components/monitoring/generate.py --check  # exit 1 if out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
RULES_DIR = ROOT / "infra/prometheus/rules"
DASHBOARDS_DIR = ROOT / "infra/grafana/dashboards"
GENERATED = HERE / "generated"
RULES_OUTPUT = GENERATED / "prometheusrules.yaml"
DASHBOARDS_OUTPUT = GENERATED / "dashboards.yaml"

# kube-prometheus-stack's Grafana sidecar loads every ConfigMap with this label (its default
# `sidecar.dashboards.label`), into the folder the annotation names.
DASHBOARD_LABEL = {"grafana_dashboard": "1"}
DASHBOARD_FOLDER_ANNOTATION = {"grafana_folder": "iris-mlops"}
PART_OF = {"app.kubernetes.io/part-of": "iris-mlops"}


def header(sources: str) -> str:
    return (
        f"# Generated from {sources} by\n"
        f"# {HERE.relative_to(ROOT)}/generate.py: do not edit here, edit the source and run it\n"
        "# (make lint fails while this file is out of date).\n"
    )


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the copy reads like its source."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def dump_all(documents: list[dict[str, Any]]) -> str:
    return yaml.dump_all(
        documents, Dumper=_LiteralDumper, sort_keys=False, width=4096, allow_unicode=True
    )


def rule_name(stem: str) -> str:
    return stem if stem.startswith("iris-mlops") else f"iris-mlops-{stem}"


def prometheus_rules() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        spec = yaml.safe_load(path.read_text())
        objects.append(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": {"name": rule_name(path.stem), "labels": dict(PART_OF)},
                "spec": {"groups": spec["groups"]},
            }
        )
    return objects


def dashboards() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"grafana-dashboard-{path.stem}",
                    "labels": {**PART_OF, **DASHBOARD_LABEL},
                    "annotations": dict(DASHBOARD_FOLDER_ANNOTATION),
                },
                "data": {path.name: path.read_text()},
            }
        )
    return objects


def rendered() -> dict[Path, str]:
    return {
        RULES_OUTPUT: header("infra/prometheus/rules/*.yml") + dump_all(prometheus_rules()),
        DASHBOARDS_OUTPUT: header("infra/grafana/dashboards/*.json") + dump_all(dashboards()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Only check generated/ is current.")
    arguments = parser.parse_args()
    stale = []
    for path, text in rendered().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if arguments.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(
            f"out of date: {', '.join(stale)}; run python {Path(__file__).relative_to(ROOT)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
