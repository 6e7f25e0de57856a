"""Real clients of the protocols the predictor and the gateway speak, for end-to-end tests.

- `tritonclient[http]` (the Open Inference Protocol V2, JSON and binary tensors) pins what the
  project's lock may not hold, so it lives in a virtual environment of its own, made once with
  uv under `.cache/test-clients/` (git-ignored, shared by test runs and xdist workers under a
  file lock) and driven through `tests/support/triton_client_script.py` by subprocess:
  `triton_client.run(url, calls)`.
- MLflow's `ScoringServerClient` runs in the project's environment (the same MLflow the
  predictor serves with): `scoring_client(url)`.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from iris_devstack.processes import REPO_ROOT

TRITONCLIENT = "tritonclient[http]==2.73.0"
CLIENTS_DIR = REPO_ROOT / ".cache" / "test-clients"
SCRIPT = Path(__file__).with_name("triton_client_script.py")


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to build tritonclient's environment (as for make install)")
    return uv


def triton_environment() -> Path:
    """The Python of an environment with `TRITONCLIENT` installed; made on first use."""
    venv = CLIENTS_DIR / TRITONCLIENT.replace("[", "-").replace("]", "").replace("==", "-")
    python = venv / "bin" / "python"
    done = venv / ".installed"
    CLIENTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(CLIENTS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(venv, ignore_errors=True)
            uv = _uv()
            subprocess.run(
                [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True
            )
            subprocess.run(
                [uv, "pip", "install", "--quiet", "--python", str(python), TRITONCLIENT],
                check=True,
            )
            done.touch()
    return python


@dataclass(frozen=True)
class TritonClient:
    """tritonclient's `InferenceServerClient`, in its own environment."""

    python: Path

    def run(self, base_url: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Make `calls` (see triton_client_script.py) on one client of `base_url`, in order."""
        order = {"url": urlsplit(base_url).netloc, "calls": calls}
        finished = subprocess.run(
            [str(self.python), str(SCRIPT)],
            input=json.dumps(order),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if finished.returncode != 0:
            raise RuntimeError(f"tritonclient failed:\n{finished.stderr[-4000:]}")
        answers: list[dict[str, Any]] = json.loads(finished.stdout)
        return answers

    def one(self, base_url: str, call: dict[str, Any]) -> dict[str, Any]:
        return self.run(base_url, [call])[0]


@pytest.fixture(scope="session")
def triton_client() -> TritonClient:
    return TritonClient(triton_environment())


def scoring_client(base_url: str) -> ScoringServerClient:
    """MLflow's own client of `mlflow models serve`, pointed at `base_url`."""
    parts = urlsplit(base_url)
    return ScoringServerClient(parts.hostname, parts.port)
