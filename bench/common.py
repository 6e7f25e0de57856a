"""What `make bench`, `make soak` and `make profile` share: the loads' constants, progress
lines, a run on a second local stack (Session), memory of process trees, and the writer of the
results: JSON with every figure, and Markdown from bench/templates/ (Jinja)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import jinja2

from iris_devstack.private_stack import PrivateStack
from iris_predictor.config import PredictorSettings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
MODEL_NAME = "Iris-LogisticRegression"
# The goals are stated for these loads; changing them changes what the goals mean.
CONNECTIONS, BATCH_CONNECTIONS, BATCH_ROWS = 32, 4, 1000
MLFLOW_SERVE_WORKERS = 2
WRK_THREADS, WRK_TIMEOUT = 2, "10s"
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


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in children.read_text().split():
                tree.extend(process_tree(int(child)))
        except OSError:
            continue  # the thread or child ended while we looked
    return tree


def tree_memory(pid: int | None) -> dict[str, Any] | None:
    """RSS and PSS summed over the tree rooted at `pid`, and of its largest process (by RSS).
    RSS counts pages shared between forked workers once per process; PSS splits them."""
    if pid is None:
        return None
    per_process = []
    for member in process_tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:  # ended meanwhile
            text = ""
        kib = dict(re.findall(r"^(Rss|Pss):\s+(\d+)", text, re.MULTILINE))
        per_process.append((int(kib.get("Rss", 0)), int(kib.get("Pss", 0))))
    rss, pss = (sum(column) for column in zip(*per_process, strict=True))
    largest = max(per_process)
    return {
        "processes": len(per_process),
        **{"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1)},
        "largest_rss_mib": round(largest[0] / 1024, 1),
        "largest_pss_mib": round(largest[1] / 1024, 1),
        "per_process_rss_mib": [round(kib / 1024, 1) for kib, _ in per_process],
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def _first_match(path: str, pattern: str) -> str | None:
    found = (
        re.search(pattern, Path(path).read_text(), re.MULTILINE) if Path(path).exists() else None
    )
    return found.group(1).strip() if found else None


def _machine() -> dict[str, Any]:
    mem_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib) / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "os": _first_match("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)"?'),
        "python": platform.python_version(),
    }


def _library_versions() -> dict[str, str]:
    names = set(LIBRARIES)
    for package in SERVICE_PACKAGES:
        try:
            declared = metadata.requires(package) or []
        except metadata.PackageNotFoundError:
            continue
        names |= {re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0] for req in declared}
    versions = {}
    for name in sorted(names, key=str.lower):
        try:
            if not name.startswith("iris-"):
                versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


class Session:
    """One run on a second local stack (iris_devstack.private_stack) in a state folder of its
    own. On exit the stack stops; the folder (logs included) goes only when the run finished
    and BENCH_KEEP_STATE is unset."""

    def __init__(self, name: str, command: str, phases: dict[str, float] | None = None) -> None:
        self.started, self.phases = time.monotonic(), phases
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
        self.finished = False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        say("stopping the stack")
        with timed("stack_down", self.phases if self.phases is not None else {}):
            self.stack.down()
        if self.finished and not os.environ.get("BENCH_KEEP_STATE"):
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            say(f"kept {self.work} (logs in {self.work / 'logs'} and {self.work / 'state/logs'})")

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


# --- the report -------------------------------------------------------------------------------


def cell(value: Any, digits: int = 1) -> str:
    """A table cell: numbers with thousands separators, None as `-`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def provenance(results: dict[str, Any]) -> str:
    git, host = results["git"], results["machine"]
    commit = git["commit"][:10] + (" with uncommitted changes" if git["dirty"] else "")
    return (
        f"Measured {results['timestamp']} on commit {commit}, {host['cores']} cores "
        f"({host['cpu']}), by `{results['command']}` in {results['elapsed_s'] / 60:.1f} min."
    )


def verdicts(results: dict[str, Any], key: str = "goals") -> str:
    """The goals (or the soak's checks) as a table, how many were met, and the provenance."""
    records, ratio = results[key], key == "goals"
    lines = [
        f"| {key[:-1].capitalize()} | Target | Measured |{' Ratio |' * ratio} Met |",
        "|---|---|---|---|" + "---|" * ratio,
    ]
    for r in records:
        shown = "-" if r.get("ratio") is None else f"{r['ratio']:.3g}x"
        cells = [r.get("goal") or r.get("check"), r["target"], r["measured"], *[shown] * ratio]
        lines.append("| " + " | ".join([*cells, "✅" if r["met"] else "❌"]) + " |")
    met = sum(1 for r in records if r["met"])
    return "\n".join(lines) + f"\n\n{met} of {len(records)} {key} met. {provenance(results)}"


# Markdown, not HTML: nothing to escape.
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701
)
TEMPLATES.filters.update(n=cell, f=format, pct=lambda share: f"{share * 100:.1f}%")
TEMPLATES.globals.update(verdicts=verdicts, provenance=provenance)


def render(template: str, results: dict[str, Any]) -> str:
    return TEMPLATES.get_template(template).render(results, run=results)


def write(results: dict[str, Any], json_path: Path, template: str) -> None:
    """The results as JSON, and as Markdown beside it (same name, `.md`), printed too."""
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(render(template, results))
    print(md_path.read_text())
    say(f"wrote {json_path} and {md_path}")


def update_readme(readme: Path, results: dict[str, Any]) -> bool:
    """Replace the goals table between the bench markers; False when the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.DOTALL)
    block = f"{README_START}\n{verdicts(results)}\n{README_END}"
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return pattern.search(text) is not None
