#!/usr/bin/env bash
# Podman for `make images` and the compose targets where no Docker daemon answers, set up for
# the host it runs on. Idempotent: with everything in place it changes nothing.
#   - Installs podman, runc and debootstrap (Debian's packages) when missing: as root, or with
#     password-less sudo; otherwise it names the packages and fails.
#   - Writes the containers.conf that podman must run with here (path printed on stdout;
#     scripts/images.sh exports it as CONTAINERS_CONF unless that is set already):
#       runtime runc   crun refuses kernels with hybrid cgroups (v1 and v2 mounted together);
#                      runc runs everywhere podman does.
#       ulimits        containers get the host's own hard limit on open files and at most 4096
#                      processes: podman's defaults are higher than many hosts allow, and
#                      raising a limit needs a capability sandboxes do not grant.
# Usage: scripts/ensure_podman.sh [CONF_PATH]   (default .cache/images/containers.conf)
set -euo pipefail
cd "$(dirname "$0")/.."

CONF="${1:-.cache/images/containers.conf}"
PACKAGES=(podman runc debootstrap)
MAX_PROCESSES=4096

say() { echo "[ensure_podman] $*" >&2; }

missing_packages() {
  local package
  for package in "${PACKAGES[@]}"; do
    command -v "$package" >/dev/null 2>&1 || echo "$package"
  done
}

mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${missing[*]}; install them with your distribution's package manager"
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    say "missing: ${missing[*]}; install them: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]} with apt-get"
  apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
  # With their recommendations: netavark and aardvark-dns give compose networks their DNS.
  "${apt[@]}" update -qq
  "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null
fi

open_files="$(ulimit -Hn)"
processes="$(ulimit -Hu)"
if [ "$open_files" = unlimited ]; then open_files=1048576; fi
if [ "$processes" = unlimited ] || [ "$processes" -gt "$MAX_PROCESSES" ]; then
  processes="$MAX_PROCESSES"
fi

wanted="# Written by scripts/ensure_podman.sh for this host; see that script for why.
[containers]
default_ulimits = [\"nofile=${open_files}:${open_files}\", \"nproc=${processes}:${processes}\"]

[engine]
runtime = \"runc\""

if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$wanted" ]; then
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$wanted" >"$CONF"
  say "wrote $CONF"
fi
echo "$(cd "$(dirname "$CONF")" && pwd)/$(basename "$CONF")"
