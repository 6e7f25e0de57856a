"""What the figures were measured on: the machine, the library versions, the commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.config import ROOT

# The serving path and its baseline; the services' own declared dependencies are added.
LIBRARIES = (
    "mlflow",
    "scikit-learn",
    "fastapi",
    "uvicorn",
    "starlette",
    "pydantic",
    "numpy",
    "pandas",
    "scipy",
    "uvloop",
    "httptools",
    "granian",
    "orjson",
    "httpx",
    "prometheus-client",
    "celery",
    "redis",
    "supervisor",
)
SERVICE_PACKAGES = ("iris-shared", "iris-predictor", "iris-gateway", "iris-trainer")


def _first_match(path: str, pattern: str) -> str | None:
    try:
        found = re.search(pattern, Path(path).read_text(), flags=re.MULTILINE)
    except OSError:
        return None
    return found.group(1).strip() if found else None


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    mem_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib) / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "os": _first_match("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)"?'),
        "python": platform.python_version(),
    }


def _declared(package: str) -> list[str]:
    try:
        requirements = metadata.requires(package) or []
    except metadata.PackageNotFoundError:
        return []
    return [re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0] for req in requirements]


def library_versions() -> dict[str, str]:
    names = {*LIBRARIES, *(dep for pkg in SERVICE_PACKAGES for dep in _declared(pkg))}
    versions: dict[str, str] = {}
    for name in sorted(names, key=str.lower):
        if name.startswith("iris-"):
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return completed.stdout.strip()

    # Not git(): its strip() would eat the first line's leading status column.
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "changed_files": changed}
