#!/usr/bin/env bash
# Static checks of the infrastructure files: Dockerfiles, compose, CI workflow, Prometheus
# config, alert rules and their unit tests, Alertmanager config, Grafana dashboard. Run from
# anywhere:
#   infra/checks/lint_infra.sh
# Uses the project's venv (uv sync), `promtool` (apt-get install prometheus) and `amtool`
# (apt-get install prometheus-alertmanager) from PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found on PATH: install it with 'apt-get install -y prometheus'" \
        "(Debian/Ubuntu) or from https://prometheus.io/download/" >&2
    exit 127
fi
if ! command -v amtool >/dev/null 2>&1; then
    echo "amtool not found on PATH: install it with 'apt-get install -y prometheus-alertmanager'" \
        "(Debian/Ubuntu) or from https://prometheus.io/download/#alertmanager" >&2
    exit 127
fi

step "hadolint"
"$VENV_BIN/hadolint" services/Dockerfile services/mlflow/Dockerfile infra/images/*/Dockerfile

step "compose files against the compose specification"
"$VENV_BIN/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml compose.offline.yaml

step "GitHub workflows against their schema"
"$VENV_BIN/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml

step "Prometheus configs (and the rule files they load)"
promtool check config infra/prometheus/prometheus.yml infra/prometheus/prometheus.local.yml

step "Alert rules"
promtool check rules infra/prometheus/rules/*.yml

step "Alert rule unit tests"
promtool test rules infra/prometheus/tests/*.yml

step "Alertmanager config"
amtool check-config infra/alertmanager/alertmanager.yml

step "PromQL of rules and dashboards"
"$VENV_BIN/python" infra/checks/check_promql.py

step "Kubernetes manifests (infra/k8s): render, schemas, CRDs, promtool, policy"
"$VENV_BIN/python" infra/checks/check_k8s.py

printf '\nAll infrastructure checks passed.\n'
