#!/usr/bin/env bash
# Starts each image of the stack briefly, the way compose.yaml runs it (its user, a read-only
# root filesystem, no capabilities, no-new-privileges, a /tmp in memory), and checks that it
# does its job: Redis with an ACL file answers its users, the exporter logs in as one,
# PostgreSQL initialises from POSTGRES_PASSWORD_FILE and lets a network client in with the
# password only, Prometheus and Alertmanager load this repository's configs, MLflow's
# basic-auth app answers /health and refuses anonymous API calls, the predictor and the
# gateway answer /healthz (and their HEALTHCHECK passes), and the trainer image runs Celery,
# Flower, the CLI, DVC and git on a checkout owned by another user.
# Not part of `make test`: `make compose-smoke` exercises the images as a stack. Run it after
# `make images`:
#   bash scripts/images.sh verify
# Everything it starts is named iris-verify-* and removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

ENGINE="${ENGINE:?run through scripts/images.sh verify}"
OFFLINE="$(bash scripts/images.sh offline)"
PREFIX=iris-verify
NETWORK="$PREFIX-net"
MLFLOW_VERSION="$(awk '/^name = "mlflow"$/ { f = 1; next } f { gsub(/[^0-9.]/, ""); print; exit }' uv.lock)"
if [ "$OFFLINE" = yes ]; then
  REDIS=localhost/iris-offline/redis:7.0
  POSTGRES=localhost/iris-offline/postgres:15
  PROMETHEUS=localhost/iris-offline/prometheus:2.42
  ALERTMANAGER=localhost/iris-offline/alertmanager:0.25
  EXPORTER=localhost/iris-offline/redis-exporter:1.45
else
  image_of() { sed -n "/^  $1:/,/^  [a-z]/s/^ *image: *//p" compose.yaml | head -n 1; }
  REDIS="$(image_of redis)"
  POSTGRES="$(image_of postgres)"
  PROMETHEUS="$(image_of prometheus)"
  ALERTMANAGER="$(image_of alertmanager)"
  EXPORTER="$(image_of redis-exporter)"
fi

SECRETS="$(mktemp -d)"
failures=0
ok() { echo "[verify] ok    $*"; }
fail() {
  echo "[verify] FAIL  $*" >&2
  failures=$((failures + 1))
}

remove_started() {
  local names
  names="$("$ENGINE" ps -a --format '{{.Names}}' | grep "^$PREFIX-" || true)"
  if [ -n "$names" ]; then
    # shellcheck disable=SC2086 # one name per word
    "$ENGINE" rm -f -t 0 $names >/dev/null 2>&1 || true
  fi
  "$ENGINE" network rm "$NETWORK" >/dev/null 2>&1 || true
  local volume
  for volume in redis-data postgres-data prometheus-data alertmanager-data mlflow-auth \
    prediction-logs model-cache; do
    "$ENGINE" volume rm -f "$PREFIX-$volume" >/dev/null 2>&1 || true
  done
}
trap '[ -n "${KEEP:-}" ] || remove_started; rm -rf "$SECRETS"' EXIT
# What an interrupted run may have left.
remove_started
"$ENGINE" network create "$NETWORK" >/dev/null

# run NAME IMAGE [ENGINE RUN ARGS...] -- [COMMAND...]: as compose.yaml's x-locked-down runs it.
run() {
  local name="$1" image="$2"
  shift 2
  local args=()
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
    args+=("$1")
    shift
  done
  [ "$#" -gt 0 ] && shift
  "$ENGINE" run -d --name "$PREFIX-$name" --network "$NETWORK" --network-alias "$name" \
    --read-only --cap-drop ALL --security-opt no-new-privileges --tmpfs /tmp \
    "${args[@]}" "$image" "$@" >/dev/null
}

in_container() { "$ENGINE" exec "$PREFIX-$1" "${@:2}"; }

# check DESCRIPTION COMMAND...: ok when COMMAND succeeds.
check() {
  local what="$1"
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}
equals() { [ "$1" = "$2" ]; }

# wait_for SECONDS DESCRIPTION COMMAND...: true once COMMAND succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "$what (not within the time)"
      return 1
    fi
    sleep 1
  done
  ok "$what"
}

http_ok() { in_container "$1" wget -q -O /dev/null "http://127.0.0.1:$2$3"; }
python_get() {
  in_container "$1" python -c "import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=4)" "$2"
}

logs_of() { "$ENGINE" logs --tail "${LOG_LINES:-20}" "$PREFIX-$1" 2>&1 | sed 's/^/    /' >&2; }

# --- Redis and its exporter ------------------------------------------------------------------
printf 'user default off\nuser exporter on >exporter-secret ~* &* +@all\n' >"$SECRETS/redis_acl"
printf '{"redis://redis:6379": "exporter-secret"}' >"$SECRETS/redis_exporter_passwords"
chmod 0644 "$SECRETS"/*
run redis "$REDIS" --user redis -v "$PREFIX-redis-data:/data" \
  -v "$SECRETS/redis_acl:/run/secrets/redis_acl:ro" -- \
  redis-server --appendonly yes --appendfsync everysec --save "" --maxmemory 512mb \
  --maxmemory-policy noeviction --aclfile /run/secrets/redis_acl
if wait_for 20 "redis: up with the ACL file, default user off (NOAUTH)" \
  sh -c "$ENGINE exec $PREFIX-redis redis-cli ping | grep -q NOAUTH"; then
  check "redis: its ACL user logs in" equals PONG \
    "$(in_container redis redis-cli --user exporter --pass exporter-secret --no-auth-warning ping)"
  check "redis: append-only files in /data" in_container redis test -d /data/appendonlydir
  check "redis: not root" equals 999 "$(in_container redis id -u)"
else
  logs_of redis
fi
run redis-exporter "$EXPORTER" -v "$SECRETS/redis_exporter_passwords:/run/secrets/redis_exporter_passwords:ro" -- \
  --redis.addr=redis://redis:6379 --redis.user=exporter \
  --redis.password-file=/run/secrets/redis_exporter_passwords \
  --check-single-keys=db0=iris:celery:iris.training,db0=iris:jobs:pending --redis-only-metrics
wait_for 20 "redis-exporter: logged in as exporter (redis_up 1)" \
  sh -c "$ENGINE exec $PREFIX-redis-exporter wget -q -O - http://127.0.0.1:9121/metrics | grep -q '^redis_up 1'" ||
  logs_of redis-exporter

# --- PostgreSQL ------------------------------------------------------------------------------
printf 'postgres-secret' >"$SECRETS/postgres_password"
chmod 0644 "$SECRETS/postgres_password"
# /run as a tmpfs, not /var/run/postgresql alone: with a read-only root filesystem podman mounts
# its own root-owned tmpfs on /run over a tmpfs mounted below it, and the socket has nowhere to go.
postgres_args=(--user postgres --tmpfs /run -v "$PREFIX-postgres-data:/var/lib/postgresql/data"
  -v "$SECRETS/postgres_password:/run/secrets/postgres_password:ro"
  -e POSTGRES_USER=mlflow -e POSTGRES_DB=mlflow -e POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password)
run postgres "$POSTGRES" "${postgres_args[@]}" --
psql_over_network() {
  "$ENGINE" run --rm --network "$NETWORK" -e PGPASSWORD="$1" --entrypoint psql "$POSTGRES" \
    -h postgres -U mlflow -d mlflow -tAc 'select 1'
}
if wait_for 60 "postgres: initialised, pg_isready" in_container postgres pg_isready -U mlflow -d mlflow; then
  wait_for 20 "postgres: a network client with the password gets in" psql_over_network postgres-secret
  if psql_over_network wrong-secret >/dev/null 2>&1; then
    fail "postgres: a wrong password got in"
  else
    ok "postgres: a wrong password is refused"
  fi
  "$ENGINE" rm -f -t 10 "$PREFIX-postgres" >/dev/null
  run postgres "$POSTGRES" "${postgres_args[@]}" --
  wait_for 30 "postgres: starts again on its volume (no second initdb)" psql_over_network postgres-secret
else
  logs_of postgres
fi

# --- Prometheus and Alertmanager -------------------------------------------------------------
run alertmanager "$ALERTMANAGER" -v "$PWD/infra/alertmanager:/etc/alertmanager:ro" \
  -v "$PREFIX-alertmanager-data:/alertmanager" -- \
  --config.file=/etc/alertmanager/alertmanager.yml --storage.path=/alertmanager \
  --cluster.listen-address=
wait_for 30 "alertmanager: ready with infra/alertmanager" http_ok alertmanager 9093 /-/ready ||
  logs_of alertmanager
run prometheus "$PROMETHEUS" -v "$PWD/infra/prometheus:/etc/prometheus:ro" \
  -v "$PREFIX-prometheus-data:/prometheus" -- \
  --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus \
  --storage.tsdb.retention.time=15d
if wait_for 30 "prometheus: ready with infra/prometheus" http_ok prometheus 9090 /-/ready; then
  rules="$(in_container prometheus wget -q -O - http://127.0.0.1:9090/api/v1/rules | grep -o '"name":' | wc -l)"
  check "prometheus: $rules rule groups and rules loaded" test "$rules" -gt 0
else
  logs_of prometheus
fi

# --- MLflow with basic auth, on the PostgreSQL above ---------------------------------------------
printf '[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:////mlflow/auth/basic_auth.db\nadmin_username = admin\nadmin_password = admin-secret-1234\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
  >"$SECRETS/mlflow_auth_config"
chmod 0644 "$SECRETS/mlflow_auth_config"
run mlflow "iris-mlops/mlflow:$MLFLOW_VERSION" --tmpfs /home/mlflow -v "$PREFIX-mlflow-auth:/mlflow/auth" \
  -v "$SECRETS/mlflow_auth_config:/run/secrets/mlflow_auth_config:ro" \
  -e MLFLOW_AUTH_CONFIG_PATH=/run/secrets/mlflow_auth_config \
  -e MLFLOW_FLASK_SERVER_SECRET_KEY=verify-secret-key -e MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false -- \
  --app-name basic-auth --workers 1 --serve-artifacts --artifacts-destination /mlflow/artifacts \
  --backend-store-uri postgresql+psycopg2://mlflow:postgres-secret@postgres:5432/mlflow \
  --allowed-hosts "mlflow:*,localhost:*,127.0.0.1:*"
if wait_for 90 "mlflow $MLFLOW_VERSION: basic-auth app on PostgreSQL answers /health" \
  python_get mlflow http://127.0.0.1:5002/health; then
  api=http://127.0.0.1:5002/api/2.0/mlflow/registered-models/search
  status="$(in_container mlflow python -c "import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=4)
    print(200)
except urllib.error.HTTPError as error:
    print(error.code)" "$api")"
  check "mlflow: an anonymous API call gets 401 (got $status)" equals 401 "$status"
  check "mlflow: the admin's credentials are accepted" in_container mlflow python -c "import base64, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
request.add_header('Authorization', 'Basic ' + base64.b64encode(b'admin:admin-secret-1234').decode())
urllib.request.urlopen(request, timeout=4)" "$api"
else
  logs_of mlflow
fi

# --- The services ----------------------------------------------------------------------------
if [ "$ENGINE" = podman ]; then
  healthy() { "$ENGINE" healthcheck run "$PREFIX-$1"; }
else
  healthy() { [ "$("$ENGINE" inspect --format '{{.State.Health.Status}}' "$PREFIX-$1")" = healthy ]; }
fi
run predictor iris-mlops/predictor:latest -v "$PREFIX-prediction-logs:/var/lib/iris/prediction-logs" \
  -v "$PREFIX-model-cache:/var/lib/iris/model-cache" -e MLFLOW_TRACKING_URI=http://mlflow:5002 \
  -e MLFLOW_TRACKING_USERNAME=admin -e MLFLOW_TRACKING_PASSWORD=admin-secret-1234 \
  -e PREDICTOR_WORKERS=1 --
if wait_for 60 "predictor: /healthz (no model yet)" python_get predictor http://127.0.0.1:8001/healthz; then
  wait_for 30 "predictor: its HEALTHCHECK passes" healthy predictor
else
  logs_of predictor
fi
printf 'verify-token-0123456789abcdef0123456789' >"$SECRETS/api_token"
chmod 0644 "$SECRETS/api_token"
run gateway iris-mlops/gateway:latest -v "$SECRETS/api_token:/run/secrets/api_token:ro" \
  -e SECRETS_DIR=/run/secrets -e GATEWAY_PREDICTOR_URL=http://predictor:8001 \
  -e GATEWAY_WORKERS=1 -e "REDIS_URL=redis://exporter:exporter-secret@redis:6379/0" --
if wait_for 60 "gateway: /healthz" python_get gateway http://127.0.0.1:8002/healthz; then
  wait_for 30 "gateway: its HEALTHCHECK passes" healthy gateway
else
  logs_of gateway
fi

trainer() {
  "$ENGINE" run --rm --read-only --cap-drop ALL --security-opt no-new-privileges --tmpfs /tmp \
    --tmpfs /home/app -v "$PWD/params.yaml:/workspace/params.yaml:ro" \
    -v "$PWD/data:/workspace/data:ro" -v "$PWD/.git:/workspace/.git:ro" \
    iris-mlops/trainer:latest "$@"
}
for command in "celery --version" "iris-mlops --help" "dvc --version" "celery -A iris_trainer.flower_app flower --help"; do
  # shellcheck disable=SC2086 # each command is a list of words
  if trainer $command >/dev/null 2>&1; then ok "trainer: $command"; else fail "trainer: $command"; fi
done
expected_commit="$(git rev-parse HEAD)"
lineage="$(trainer python -c "from pathlib import Path
from iris_trainer.pipeline.data import dvc_recorded_md5, git_commit
print(git_commit(Path('/workspace')), dvc_recorded_md5(Path('/workspace')))" 2>/dev/null || true)"
if [ "${lineage%% *}" = "$expected_commit" ] && [ -n "${lineage#* }" ] && [ "${lineage#* }" != None ]; then
  ok "trainer: lineage of the mounted checkout, owned by uid $(stat -c %u .git) (commit ${expected_commit:0:12}, data md5 ${lineage#* })"
else
  fail "trainer: lineage of the mounted checkout: $lineage"
fi
check "trainer: runs as 10001" equals 10001 "$(trainer id -u)"

for image in iris-mlops/predictor:latest iris-mlops/gateway:latest iris-mlops/trainer:latest \
  "iris-mlops/mlflow:$MLFLOW_VERSION"; do
  check "$image: MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false" equals false \
    "$("$ENGINE" run --rm --entrypoint printenv "$image" MLFLOW_ALLOW_PICKLE_DESERIALIZATION)"
done

if [ "$failures" -gt 0 ]; then
  echo "[verify] $failures check(s) failed" >&2
  exit 1
fi
echo "[verify] every image does its job"
