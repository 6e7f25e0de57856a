"""What `make bench`, `make soak` and `make profile` share: the model and services they name,
progress lines, steps timed or allowed to fail, and a run on a second local stack (Session)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from iris_devstack.private_stack import PrivateStack
from iris_predictor.config import PredictorSettings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME, MLFLOW_SERVE_WORKERS = "Iris-LogisticRegression", 2
# The serving path and its baseline; the services' own declared dependencies are added.
LIBRARIES = (
    *("mlflow", "scikit-learn", "fastapi", "uvicorn", "starlette", "pydantic", "numpy", "pandas"),
    *("scipy", "uvloop", "httptools", "granian", "orjson", "httpx", "prometheus-client"),
    *("celery", "redis", "supervisor"),
)
SERVICE_PACKAGES = ("iris-shared", "iris-predictor", "iris-gateway", "iris-trainer")
# The stack's services: the report's name, and supervisord's program.
SERVICES = {"predictor": "predictor", "gateway": "gateway", "trainer worker": "trainer"}
SERVICES["MLflow server"] = "mlflow"
_STARTED = time.monotonic()


def setting(name: str, default: int) -> int:
    return int(os.environ.get(name, "").strip() or default)


def poll_interval_s(stack: PrivateStack) -> float:
    """The alias poll interval the stack's predictor runs with (environment, .env, default)."""
    configured = stack.stack_env().get("PREDICTOR_POLL_INTERVAL_S")
    return float(configured or PredictorSettings.model_fields["poll_interval_s"].default)


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:4.0f}s] {message}", flush=True)


def attempt(what: str, step: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run a step whose failure is recorded in the results instead of ending the run."""
    try:
        return step(), None
    except Exception as exc:
        say(f"{what} failed: {exc}")
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {exc}"


@contextmanager
def timed(phase: str, seconds: dict[str, float]) -> Iterator[None]:
    """Record in `seconds[phase]` how long the block took, whether or not it succeeded."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[phase] = round(time.monotonic() - started, 1)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def _machine() -> dict[str, Any]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu[1].strip() if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 1024**3, 1),
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME"),
        "python": platform.python_version(),
    }


def _library_versions() -> dict[str, str]:
    names = set(LIBRARIES)
    for package in SERVICE_PACKAGES:
        declared = metadata.requires(package) or []
        names |= {re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0] for req in declared}
    versions = {}
    for name in sorted(names - {n for n in names if n.startswith("iris-")}, key=str.lower):
        with suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


class Session:
    """One run on a second local stack (iris_devstack.private_stack) in a state folder of its
    own. On exit the stack stops; the folder (logs included) goes only when the run finished
    and BENCH_KEEP_STATE is unset."""

    def __init__(self, name: str, command: str) -> None:
        self.started, self.finished = time.monotonic(), False
        self.phases: dict[str, float] = {}  # seconds each step took, the stack's start and stop too
        # Not stripped: that would eat the first line's leading status column.
        changed = [line[3:] for line in _git("status", "--porcelain").splitlines() if line.strip()]
        self.results: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "git": {"commit": _git("rev-parse", "HEAD").strip(), "dirty": bool(changed)}
            | {"changed_files": changed},
            # Whatever the person running it knows about the machine meanwhile (other jobs, ...).
            "note": os.environ.get("BENCH_NOTE", ""),
            "load_average": {"before": _load_average()},
        }
        self.work = Path(tempfile.mkdtemp(prefix=f"iris-{name}-"))
        say(f"state and logs in {self.work}")
        self.stack = PrivateStack.prepare(self.work)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        say("stopping the stack")
        with timed("stack_down", self.phases):
            self.stack.down()
        if self.finished and not os.environ.get("BENCH_KEEP_STATE"):
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            say(f"kept {self.work} (logs in {self.work / 'logs'} and {self.work / 'state/logs'})")

    def up(self, durable_redis: bool = False) -> None:
        say("starting the stack (a private Redis, then python -m iris_devstack up)")
        with timed("stack_up", self.phases):
            self.stack.start_redis(durable=durable_redis)
            self.stack.up()

    def closing(self) -> dict[str, Any]:
        """What the results say of the run once it is over: time, load, machine, libraries."""
        return {
            "load_average": self.results["load_average"] | {"after": _load_average()},
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "machine": _machine(),
            "versions": _library_versions(),
        }


def command_line(target: str) -> str:
    """`make <target>` with this run's settings in front, as someone would retype it."""
    overrides = [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if v and k.startswith(("BENCH_", "PROFILE_")) and k != "BENCH_NOTE"
    ]
    return " ".join([*overrides, f"make {target}"])
