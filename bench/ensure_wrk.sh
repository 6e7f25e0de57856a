#!/usr/bin/env bash
# make bench drives the servers with wrk (Debian/Ubuntu package `wrk`): install it when missing.
set -euo pipefail

command -v wrk >/dev/null 2>&1 && exit 0

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq wrk
  fi
fi

if ! command -v wrk >/dev/null 2>&1; then
  cat >&2 <<'MSG'
make bench needs the load generator wrk, and it could not be installed here (no apt-get, or
not root and no password-less sudo). Install it, then run make bench again:
  Debian/Ubuntu:  sudo apt-get install wrk
  Fedora:         sudo dnf install wrk
  macOS:          brew install wrk
  elsewhere:      build it from https://github.com/wg/wrk (make; put ./wrk on PATH)
MSG
  exit 1
fi
