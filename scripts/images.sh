#!/usr/bin/env bash
# The stack's container images, and how compose runs them, with or without a registry.
#
#   scripts/images.sh build          build every image (`make images`)
#   scripts/images.sh compose ARGS   run compose with the engine, files and settings chosen here
#   scripts/images.sh env            the same choices as shell exports (eval "$(... env)")
#   scripts/images.sh compose-files  the compose files to use, colon-separated (COMPOSE_FILE)
#   scripts/images.sh engine         docker or podman
#   scripts/images.sh offline        yes when the stack runs on the Debian-built bases
#   scripts/images.sh sizes          each image and its size
#   scripts/images.sh prune          drop the layers of earlier builds (the next build starts cold)
#   scripts/images.sh verify         start each image briefly the way compose runs it
#
# Engine: docker when its daemon answers, else podman (installed and configured by
# scripts/ensure_podman.sh). Where no registry answers (the base images' manifests cannot be
# read), `build` first makes equivalent bases from Debian's packages (infra/images/: Debian by
# debootstrap, Python 3.11, uv from PyPI, Redis, PostgreSQL, Prometheus, Alertmanager, the Redis
# exporter), builds the services on them, and compose then adds compose.offline.yaml (which
# leaves Grafana out: it has no Debian package). The choice is remembered for compose in
# .cache/images/offline.
#
# Settings (environment, or make variables):
#   ENGINE=docker|podman    skip the detection
#   OFFLINE=auto|yes|no     yes: Debian-built bases even where a registry answers (auto)
#   COMPOSE="..."           the compose command (docker compose / the venv's podman-compose)
#   CA_BUNDLE=FILE          podman builds: CA bundle mounted for HTTPS through a TLS-intercepting
#                           proxy (default: the host's /etc/ssl/certs/ca-certificates.crt)
#   MIN_FREE_GB=N           podman: prune first when the image store's disk has less free (15)
#
# Caches between runs: the Debian base is made only when missing; image layers are reused
# (never --no-cache); uv's downloads live in a build cache mount (RUN --mount=type=cache). Each
# change of the lock leaves the previous dependency layers behind (gigabytes): `prune` drops
# them, and `build` prunes by itself when the disk runs low.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE_DIR="$ROOT/.cache/images"
LOG_DIR="$STATE_DIR/logs"
OFFLINE_STATE="$STATE_DIR/offline"
OFFLINE_OVERRIDE="compose.offline.yaml"

# The images compose runs: the tags compose.yaml names (MLflow's is the lock's version).
MLFLOW_VERSION="$(awk '/^name = "mlflow"$/ { found = 1; next }
  found { sub(/^version = "/, ""); sub(/"$/, ""); print; exit }' uv.lock)"
declare -A SERVICE_IMAGE=(
  [predictor]=iris-mlops/predictor:latest
  [gateway]=iris-mlops/gateway:latest
  [trainer]=iris-mlops/trainer:latest
  [mlflow]="iris-mlops/mlflow:${MLFLOW_VERSION}"
)

# The Debian-built bases: the tags compose.offline.yaml names, each the version bookworm ships.
UV_VERSION="$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' infra/images/uv/requirements.txt)"
DEBIAN_IMAGE=localhost/debian:bookworm
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
OFFLINE_PREFIX=localhost/iris-offline
SERVERS=(redis postgres prometheus alertmanager redis-exporter)
declare -A OFFLINE_IMAGE=(
  [python]="$OFFLINE_PREFIX/python:3.11-bookworm"
  [uv]="$OFFLINE_PREFIX/uv:${UV_VERSION}"
  [redis]="$OFFLINE_PREFIX/redis:7.0"
  [postgres]="$OFFLINE_PREFIX/postgres:15"
  [prometheus]="$OFFLINE_PREFIX/prometheus:2.42"
  [alertmanager]="$OFFLINE_PREFIX/alertmanager:0.25"
  [redis-exporter]="$OFFLINE_PREFIX/redis-exporter:1.45"
)

say() { echo "[images] $*" >&2; }
die() {
  say "$*"
  exit 1
}

# The default of a Dockerfile's build argument: the image used where a registry answers.
dockerfile_default() { sed -n "s/^ARG $1=//p" "$2" | head -n 1; }

# --- engine ----------------------------------------------------------------------------------

docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

resolve_engine() {
  if [ -z "${ENGINE:-}" ]; then
    # A docker CLI without a daemon (as on some CI images and sandboxes) does not count.
    if docker_answers; then ENGINE=docker; else ENGINE=podman; fi
  fi
  case "$ENGINE" in
    docker)
      docker_answers || die "ENGINE=docker but no Docker daemon answers (docker info)"
      ;;
    podman)
      local conf
      conf="$(bash scripts/ensure_podman.sh)"
      export CONTAINERS_CONF="${CONTAINERS_CONF:-$conf}"
      # podman's default OCI format drops HEALTHCHECK; compose builds get the same format.
      export BUILDAH_FORMAT=docker
      ;;
    *) die "ENGINE must be docker or podman, not '$ENGINE'" ;;
  esac
  export ENGINE
}

# --- registry --------------------------------------------------------------------------------

# A registry answers when the engine can read the manifests of the bases the Dockerfiles name
# (Docker Hub's Python, ghcr.io's uv): fails within a second where names do not resolve.
registry_answers() {
  local image
  for image in "$(dockerfile_default PYTHON_IMAGE services/Dockerfile)" \
    "$(dockerfile_default UV_IMAGE services/Dockerfile)"; do
    timeout 20 "$ENGINE" manifest inspect "$image" >/dev/null 2>&1 || return 1
  done
}

# yes or no: OFFLINE when given, else what the last build chose, else a probe.
resolve_offline() {
  case "${OFFLINE:-auto}" in
    yes | no) echo "$OFFLINE" ;;
    auto)
      if [ -f "$OFFLINE_STATE" ]; then
        cat "$OFFLINE_STATE"
      elif registry_answers; then
        echo no
      else
        echo yes
      fi
      ;;
    *) die "OFFLINE must be auto, yes or no, not '$OFFLINE'" ;;
  esac
}

# --- building --------------------------------------------------------------------------------

image_exists() {
  if [ "$ENGINE" = podman ]; then
    podman image exists "$1"
  else
    docker image inspect "$1" >/dev/null 2>&1
  fi
}

image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# The files of the repository a build may read: what .dockerignore lets into the context.
context_files() {
  local line pattern path
  while read -r line; do
    case "$line" in
      '!'*)
        pattern="${line#!}"
        # shellcheck disable=SC2086 # the pattern is a glob, expanded here
        for path in $pattern; do
          [ -e "$path" ] && find "$path" -type f -not -path '*/__pycache__/*' -not -name '*.pyc'
        done
        ;;
      *) ;;
    esac
  done <.dockerignore | sort -u
}

# What an image of the repository is made from: its Dockerfile, build arguments, context files
# and base images. An image made from the same is not built again: even a build whose every
# step is cached reads the whole venv to check its cache (tens of seconds).
build_inputs() {
  local dockerfile="$1" arg
  shift
  {
    printf '%s\n' "$@"
    cat "$dockerfile"
    context_files | xargs -d '\n' sha256sum
    for arg in "$@"; do
      case "$arg" in
        *_IMAGE=*) image_id "${arg#*=}" ;;
        *) ;;
      esac
    done
  } | sha256sum | cut -d' ' -f1
}

# build_one NAME TAG DOCKERFILE CONTEXT [ENGINE BUILD ARGS...]: output in .cache/images/logs.
build_one() {
  local name="$1" tag="$2" dockerfile="$3" context="$4"
  shift 4
  local inputs="" inputs_file="$STATE_DIR/inputs/$name"
  if [ "$context" = . ] && [ "$tag" != - ]; then
    inputs="$(build_inputs "$dockerfile" "$@") $ENGINE"
    if [ -f "$inputs_file" ] && [ "$(cat "$inputs_file")" = "$inputs $(image_id "$tag")" ]; then
      say "$(printf '%-15s %-45s %s' "$name" "$tag" 'up to date')"
      return 0
    fi
  fi
  local args=(build -f "$dockerfile" "$@")
  # A shared stage is built without a tag: only its layers matter, as the services' cache.
  if [ "$tag" != - ]; then args+=(-t "$tag"); fi
  if [ "$ENGINE" = podman ]; then
    args+=(--format docker --layers)
    # The builds that download from PyPI over HTTPS: uv's image (pip) and the services' (uv).
    if [ -n "$CA_BUNDLE" ]; then
      case "$name" in
        uv) args+=(-v "$CA_BUNDLE:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt) ;;
        predictor | gateway | trainer | mlflow)
          args+=(-v "$CA_BUNDLE:/run/host-ca.crt:ro" --build-arg SSL_CERT_FILE=/run/host-ca.crt)
          ;;
        *) ;;
      esac
    fi
  else
    args+=(--progress plain)
  fi
  local log="$LOG_DIR/$name.log" started=$SECONDS attempt
  # A second attempt after a failure: downloads through a proxy sometimes time out, and the
  # attempt resumes from the layers the first one finished.
  for attempt in 1 2; do
    if "$ENGINE" "${args[@]}" "$context" >"$log" 2>&1; then
      say "$(printf '%-15s %-45s %4ss' "$name" "$tag" "$((SECONDS - started))")"
      if [ -n "$inputs" ]; then
        mkdir -p "$(dirname "$inputs_file")"
        echo "$inputs $(image_id "$tag")" >"$inputs_file"
      fi
      return 0
    fi
    if [ "$attempt" = 1 ]; then
      cp "$log" "$log.failed"
      say "$name: build failed after $((SECONDS - started))s; once more (log: $log.failed)"
    fi
  done
  say "$name: build failed twice after $((SECONDS - started))s; the end of $log:"
  tail -n 25 "$log" >&2
  return 1
}

# Runs "NAME TAG DOCKERFILE CONTEXT ARGS..." lines' builds side by side; fails if any failed.
build_together() {
  local spec pids=() status=0
  for spec in "$@"; do
    # shellcheck disable=SC2086 # each spec is a list of words without spaces inside
    build_one $spec &
    pids+=("$!")
  done
  local pid
  for pid in "${pids[@]}"; do
    wait "$pid" || status=1
  done
  return "$status"
}

# A fingerprint of how the Debian base is made: a change to infra/images/debian/ remakes it.
debian_recipe() {
  { echo "$DEBIAN_SUITE $DEBIAN_MIRROR"; cat infra/images/debian/*; } | sha256sum | cut -c1-16
}

# Debian bookworm by debootstrap (minbase), imported as localhost/debian:bookworm; made only
# when missing or when its recipe changed. The release's updates and security suites, no docs
# or translations (as in Debian's -slim images), no downloaded packages kept, and no service
# starting while an image installs it.
build_debian_base() {
  local recipe
  recipe="$(debian_recipe)"
  if image_exists "$DEBIAN_IMAGE" && [ "$("$ENGINE" image inspect --format \
    '{{index .Config.Labels "org.iris-mlops.recipe"}}' "$DEBIAN_IMAGE")" = "$recipe" ]; then
    say "$(printf '%-15s %-45s %s' debian "$DEBIAN_IMAGE" 'present')"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root to make $DEBIAN_IMAGE (run as root)"
  local rootfs started=$SECONDS
  rootfs="$(mktemp -d /var/tmp/iris-debian.XXXXXX)"
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -rf '$rootfs'" RETURN
  if ! debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" \
    >"$LOG_DIR/debian.log" 2>&1; then
    tail -n 25 "$LOG_DIR/debian.log" >&2
    die "debootstrap failed (log: $LOG_DIR/debian.log)"
  fi
  rm -f "$rootfs/etc/apt/sources.list"
  install -m 0644 infra/images/debian/debian.sources "$rootfs/etc/apt/sources.list.d/debian.sources"
  install -m 0644 infra/images/debian/apt.conf "$rootfs/etc/apt/apt.conf.d/docker-clean"
  install -m 0644 infra/images/debian/dpkg-slim.cfg "$rootfs/etc/dpkg/dpkg.cfg.d/slim"
  install -m 0755 infra/images/debian/policy-rc.d "$rootfs/usr/sbin/policy-rc.d"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  tar -C "$rootfs" -c . | "$ENGINE" import --change 'CMD ["bash"]' \
    --change "LABEL org.iris-mlops.recipe=$recipe" - "$DEBIAN_IMAGE" >>"$LOG_DIR/debian.log" 2>&1
  say "$(printf '%-15s %-45s %4ss' debian "$DEBIAN_IMAGE" "$((SECONDS - started))")"
}

# The servers' images (Redis, PostgreSQL, Prometheus...) side by side, on the Debian base.
build_offline_servers() {
  local specs=() name
  for name in "${SERVERS[@]}"; do
    specs+=("$name ${OFFLINE_IMAGE[$name]} infra/images/$name/Dockerfile infra/images/$name
      --build-arg DEBIAN_IMAGE=$DEBIAN_IMAGE")
  done
  build_together "${specs[@]}"
}

# What the services build on: Python from Debian, then uv from PyPI.
build_offline_python() {
  build_one python "${OFFLINE_IMAGE[python]}" infra/images/python/Dockerfile infra/images/python \
    --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" &&
    build_one uv "${OFFLINE_IMAGE[uv]}" infra/images/uv/Dockerfile infra/images/uv \
      --build-arg "PYTHON_IMAGE=${OFFLINE_IMAGE[python]}"
}

build_services() {
  local bases=() specs=() service
  if [ "$1" = yes ]; then
    bases=(--build-arg "PYTHON_IMAGE=${OFFLINE_IMAGE[python]}"
      --build-arg "UV_IMAGE=${OFFLINE_IMAGE[uv]}")
  fi
  # The stages every service shares, first: builds running side by side would each make their
  # own copy of these layers, and a later build could then miss its cache by picking another's.
  build_together "lock - services/Dockerfile . ${bases[*]} --target lock" \
    "runtime - services/Dockerfile . ${bases[*]} --target runtime" || return 1
  for service in predictor gateway trainer; do
    specs+=("$service ${SERVICE_IMAGE[$service]} services/Dockerfile . ${bases[*]}
      --build-arg SERVICE=$service --target $service")
  done
  specs+=("mlflow ${SERVICE_IMAGE[mlflow]} services/mlflow/Dockerfile . ${bases[*]}
    --build-arg MLFLOW_VERSION=$MLFLOW_VERSION")
  build_together "${specs[@]}"
}

# Every image compose.offline.yaml names must be one this script builds.
check_offline_override() {
  local image missing=0
  while read -r image; do
    image_exists "$image" || {
      say "$OFFLINE_OVERRIDE names $image, which was not built"
      missing=1
    }
  done < <(sed -n 's/^ *image: *\(localhost\/[^ ]*\).*/\1/p' "$OFFLINE_OVERRIDE")
  return "$missing"
}

# podman: the untagged images of earlier builds on the Debian base (each carries its label),
# which are also the layer cache. Images of other projects are left alone.
prune_offline_layers() {
  [ "$ENGINE" = podman ] || die "docker: use docker builder prune and docker image prune"
  local removed
  removed="$(podman image prune -f --filter label=org.iris-mlops.recipe | wc -l)"
  say "pruned $removed untagged images of earlier builds"
}

# Prunes first when the image store's disk has less than MIN_FREE_GB left.
prune_if_disk_low() {
  [ "$ENGINE" = podman ] || return 0
  local store free_gb
  store="$(podman info --format '{{.Store.GraphRoot}}')"
  free_gb="$(df -P -BG "$store" | awk 'NR == 2 { sub(/G$/, "", $4); print $4 }')"
  if [ "$free_gb" -lt "${MIN_FREE_GB:-15}" ]; then
    say "${free_gb} GB free for images: dropping earlier builds' layers first"
    prune_offline_layers
  fi
}

cmd_build() {
  resolve_engine
  mkdir -p "$LOG_DIR"
  prune_if_disk_low
  CA_BUNDLE="${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
  if [ "$ENGINE" != podman ] || [ ! -f "$CA_BUNDLE" ]; then CA_BUNDLE=""; fi
  local offline started=$SECONDS
  # A fresh decision at each build: the registry may have come back, or gone.
  rm -f "$OFFLINE_STATE"
  offline="$(resolve_offline)"
  if [ "$offline" = yes ]; then
    say "engine $ENGINE; no registry answers (or OFFLINE=yes): bases from Debian's packages"
    build_debian_base
    # The servers' images build while the services' chain (Python, uv, services) does.
    build_offline_servers &
    local servers=$!
    local status=0
    { build_offline_python && build_services yes; } || status=1
    wait "$servers" || status=1
    [ "$status" = 0 ] || die "some images did not build (logs: $LOG_DIR)"
    check_offline_override
  else
    say "engine $ENGINE; bases from the registry"
    build_services no || die "some images did not build (logs: $LOG_DIR)"
  fi
  echo "$offline" >"$OFFLINE_STATE"
  say "all images built in $((SECONDS - started))s; compose files: $(compose_files)"
  if [ "$offline" = yes ]; then
    say "offline, the stack runs without Grafana (no Debian package; see $OFFLINE_OVERRIDE)"
  fi
}

# --- compose ---------------------------------------------------------------------------------

compose_files() {
  if [ "$(resolve_offline)" = yes ]; then
    echo "$ROOT/compose.yaml:$ROOT/$OFFLINE_OVERRIDE"
  else
    echo "$ROOT/compose.yaml"
  fi
}

# The compose command: docker's plugin, or podman-compose from the venv (the pinned release
# that honours profiles, env_file's long form and deploy.replicas), else from PATH.
resolve_compose() {
  if [ -n "${COMPOSE:-}" ]; then return; fi
  if [ "$ENGINE" = docker ]; then
    COMPOSE="docker compose"
  elif [ -x "$ROOT/.venv/bin/podman-compose" ]; then
    COMPOSE="$ROOT/.venv/bin/podman-compose"
  elif command -v podman-compose >/dev/null 2>&1; then
    COMPOSE="$(command -v podman-compose)"
    say "using $COMPOSE; the venv's podman-compose (make install) is the release this stack is run with"
  else
    die "no podman-compose: run make install"
  fi
}

cmd_env() {
  resolve_engine
  resolve_compose
  local offline
  offline="$(resolve_offline)"
  printf 'export ENGINE=%q\n' "$ENGINE"
  printf 'export COMPOSE=%q\n' "$COMPOSE"
  printf 'export COMPOSE_FILE=%q\n' "$(compose_files)"
  printf 'export IMAGES_OFFLINE=%q\n' "$offline"
  if [ "$ENGINE" = podman ]; then
    printf 'export CONTAINERS_CONF=%q\n' "$CONTAINERS_CONF"
    printf 'export BUILDAH_FORMAT=%q\n' "$BUILDAH_FORMAT"
  fi
}

cmd_compose() {
  resolve_engine
  resolve_compose
  COMPOSE_FILE="$(compose_files)"
  export COMPOSE_FILE
  # shellcheck disable=SC2086 # COMPOSE is a command with its arguments ("docker compose")
  exec $COMPOSE "$@"
}

# --- inspection ------------------------------------------------------------------------------

cmd_sizes() {
  resolve_engine
  local image
  for image in "$DEBIAN_IMAGE" "${OFFLINE_IMAGE[@]}" "${SERVICE_IMAGE[@]}"; do
    if image_exists "$image"; then
      "$ENGINE" image inspect --format '{{.Size}}' "$image" |
        awk -v image="$image" '{ printf "%-48s %6.0f MB\n", image, $1 / 1e6 }'
    fi
  done
}

cmd_verify() {
  resolve_engine
  bash infra/images/verify.sh
}

case "${1:-build}" in
  build) cmd_build ;;
  env) cmd_env ;;
  compose)
    shift
    cmd_compose "$@"
    ;;
  compose-files)
    resolve_engine
    compose_files
    ;;
  engine)
    resolve_engine
    echo "$ENGINE"
    ;;
  offline)
    resolve_engine
    resolve_offline
    ;;
  sizes) cmd_sizes ;;
  prune)
    resolve_engine
    prune_offline_layers
    ;;
  verify) cmd_verify ;;
  *) die "unknown command '$1' (see the top of $0)" ;;
esac
