"""What is measured beside the load: memory of process trees (once, or sampled over a soak),
the predictor's cold start, its recording counters, what its prediction log and every service's
log hold afterwards, and the machine, libraries and commit the figures were measured on.

Memory is summed over a service's whole process tree. RSS counts pages shared between forked
workers once per process; PSS splits them, so the PSS sum is what the tree really holds.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.config import ROOT
from bench.console import Clock, Every
from bench.loads import FLOWER
from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import answers_post, http_ok, wait_until
from iris_predictor.prediction_log import log_files
from iris_shared.feedback import FeedbackKeys
from iris_shared.jobs import DEFAULT_JOBS_NAMESPACE

# --- memory -----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    tree = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            for child in children.read_text().split():
                tree.extend(process_tree(int(child)))
        except OSError:
            continue  # the thread or child ended while we looked
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; (0, 0) for a process that ended meanwhile."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    for fields in map(str.split, lines):
        if fields and fields[0] in values:
            values[fields[0]] = int(fields[1])
    return values["Rss:"], values["Pss:"]


def tree_memory(pid: int | None) -> dict[str, Any] | None:
    """RSS and PSS of the tree rooted at `pid`, summed, and of its largest process (by RSS)."""
    if pid is None:
        return None
    pids = process_tree(pid)
    per_process = [_memory_kib(p) for p in pids]
    rss, pss = (sum(column) for column in zip(*per_process, strict=True))
    largest_rss, largest_pss = max(per_process)
    return {
        "processes": len(pids),
        "rss_mib": round(rss / 1024, 1),
        "pss_mib": round(pss / 1024, 1),
        "largest_rss_mib": round(largest_rss / 1024, 1),
        "largest_pss_mib": round(largest_pss / 1024, 1),
        "per_process_rss_mib": [round(kib / 1024, 1) for kib, _ in per_process],
    }


# The stack's services: the report's name, and supervisord's program.
SERVICES = {
    "predictor": "predictor",
    "gateway": "gateway",
    "trainer worker": "trainer",
    "MLflow server": "mlflow",
}
MEMORY_EVERY_S = 5.0


class MemoryWatch(Every):
    """RSS and PSS of each service's process tree, sampled every few seconds in a thread."""

    def __init__(self, stack: PrivateStack, clock: Callable[[], float]) -> None:
        super().__init__(MEMORY_EVERY_S, "soak-memory")
        self.stack = stack
        self.clock = clock
        self.pids: dict[str, int | None] = {}
        self.restarts: Counter[str] = Counter()
        self.series: list[dict[str, Any]] = []

    def _pid(self, name: str) -> int | None:
        pid = self.pids.get(name)
        if pid is not None and Path(f"/proc/{pid}").exists():
            return pid
        # supervisorctl only when the program's pid is unknown or gone (it is a Python start).
        fresh = self.stack.pid(SERVICES[name])
        if pid is not None and fresh != pid:
            self.restarts[name] += 1
        self.pids[name] = fresh
        return fresh

    def sample(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = {"t": self.clock()}
        for name in SERVICES:
            pid = self._pid(name)
            memory = tree_memory(pid)
            if memory is not None and pid is not None:
                memory["pids"] = sorted(process_tree(pid))
            snapshot[name] = memory
        return snapshot

    def tick(self) -> None:
        self.series.append(self.sample())

    def report(self, start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
        """Growth of each service between two samples, its peak, and the RSS series."""
        services: dict[str, Any] = {}
        for name in SERVICES:
            first, last = start.get(name), end.get(name)
            samples = [start, *self.series, end]
            peak = max((s[name]["rss_mib"] for s in samples if s.get(name)), default=None)
            entry: dict[str, Any] = {"start": first, "end": last, "peak_rss_mib": peak}
            if first and last:
                growth = round(last["rss_mib"] - first["rss_mib"], 1)
                entry.update(
                    rss_growth_mib=growth,
                    rss_growth_pct=round(100 * growth / first["rss_mib"], 1),
                    pss_growth_mib=round(last["pss_mib"] - first["pss_mib"], 1),
                    processes_replaced=len(set(first["pids"]) - set(last["pids"])),
                )
            services[name] = entry | {"program_restarts": self.restarts[name]}
        series = [
            {"t": s["t"], **{n: s[n]["rss_mib"] if s.get(n) else None for n in SERVICES}}
            for s in self.series
        ]
        return {
            "start_s": start["t"],
            "end_s": end["t"],
            "services": services,
            "rss_mib_series": series,
        }


# --- the predictor ----------------------------------------------------------------------------


def predictor_cold_start(stack: PrivateStack) -> dict[str, Any]:
    """From starting the predictor's processes to its first 200 answer to a one-row
    `POST /predict`, timed as the peers' are, and when /readyz said it was ready."""
    # The predictor runs as replicas (`predictor:predictor-0`, ...): all stop and start.
    stack.supervisorctl("stop", "predictor:*")
    headers = {"Content-Type": "application/json"}
    predict = answers_post(f"{stack.predictor_url}/predict", json.dumps(FLOWER).encode(), headers)
    # `supervisorctl start` returns only after the program's startsecs; time from the start
    # request instead, polling meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        start = pool.submit(stack.supervisorctl, "start", "predictor:*")
        try:
            ready_s = wait_until(http_ok(f"{stack.predictor_url}/readyz"), timeout=180)
            answer_s = wait_until(predict, timeout=60, interval=0.02)
            seconds = time.monotonic() - started
        except TimeoutError:
            return {"seconds": None, "error": "no 200 to POST /predict within 240 s"}
        finally:
            start.result()
    ready = httpx.get(f"{stack.predictor_url}/readyz", timeout=5).json()
    return {
        "seconds": round(seconds, 2),
        "ready_s": round(ready_s, 2),
        "after_ready_s": round(answer_s, 2),
        "model_version": ready.get("model_version"),
        "source": ready.get("source"),
        "how": "supervisorctl start predictor:* → first 200 to a one-row POST /predict",
    }


# What the predictor says of its own recording (iris_predictor.recorder, .feedback).
RECORDING_SERIES = (
    "iris_prediction_log_waits_total",
    "iris_prediction_log_dropped_total",
    "iris_prediction_store_dropped_total",
)


def recording_counts(stack: PrivateStack) -> dict[str, float] | None:
    """The predictor's recording counters after the load rounds (summed over label values):
    requests that waited for the log, log records dropped, kept answers forgotten early."""
    try:
        text = httpx.get(f"{stack.predictor_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    counts = dict.fromkeys(RECORDING_SERIES, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in counts:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts


def stop_predictor(stack: PrivateStack) -> dict[str, Any]:
    """supervisorctl stop: SIGTERM to the predictor's process group, SIGKILL only after
    stopwaitsecs; whether it came to that is in supervisord's own log."""
    started = time.monotonic()
    completed = stack.supervisorctl("stop", "predictor:*")  # replicas: a bare name matches none
    seconds = round(time.monotonic() - started, 2)
    log = stack.state / "logs" / "supervisord.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    mentions = [line for line in lines if "predictor" in line][-4:]
    return {
        "seconds": seconds,
        "supervisorctl": (completed.stdout + completed.stderr).strip(),
        "supervisord_log": mentions,
        "killed": any("SIGKILL" in line for line in mentions),
    }


def _log_documents(directory: Path) -> tuple[list[dict[str, Any]], int]:
    """Every line of the prediction log, parsed; and how many lines were not JSON."""
    documents, unreadable = [], 0
    for path in log_files(directory):
        for raw in filter(bytes.strip, path.read_bytes().splitlines()):
            try:
                documents.append(json.loads(raw))
            except ValueError:
                unreadable += 1
    return documents, unreadable


def read_prediction_log(directory: Path, answered: set[str]) -> dict[str, Any]:
    """Lines and rows of the prediction log, checked against the request ids answered 200."""
    documents, unreadable = _log_documents(directory)
    logged = Counter(str(document.get("request_id")) for document in documents)
    missing, unexpected = sorted(answered - logged.keys()), sorted(logged.keys() - answered)
    duplicated = sorted(request_id for request_id, count in logged.items() if count > 1)
    return {
        "directory": str(directory),
        "files": [{"name": p.name, "bytes": p.stat().st_size} for p in log_files(directory)],
        "lines": len(documents),
        "rows": sum(int(document.get("rows", 0)) for document in documents),
        "unreadable_lines": unreadable,
        "answered_not_logged": len(missing),
        "answered_not_logged_examples": missing[:10],
        "logged_not_answered": len(unexpected),
        "logged_not_answered_examples": unexpected[:10],
        "logged_twice": len(duplicated),
        "logged_twice_examples": duplicated[:10],
    }


def logged_times(directory: Path, request_ids: set[str]) -> list[float]:
    """When the predictor answered these requests (epoch seconds), from its log."""
    documents, _ = _log_documents(directory)
    return sorted(
        datetime.fromisoformat(d["time"]).timestamp()
        for d in documents
        if d.get("request_id") in request_ids
    )


LOG_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^(Traceback)")
LOG_EXAMPLES = 5


def _log_example(line: str) -> str:
    """A JSON log line as time, logger, message and the exception it ended with."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:300]
    if not isinstance(record, dict):
        return line[:300]
    message = str(record.get("message", "")).strip().splitlines()[:1]
    raised = str(record.get("exc_info") or "").strip().splitlines()[-1:]
    return " | ".join([str(record.get("time")), str(record.get("logger")), *message, *raised])[:300]


def service_log_findings(folders: list[Path]) -> dict[str, Any]:
    """Warnings, errors and tracebacks in every service's log: a defect the counts
    do not show (a retried write, a swallowed error) usually shows here."""
    findings: dict[str, Any] = {}
    for path in sorted(p for folder in folders for p in folder.glob("*.log")):
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_LEVEL.search(line)
            if match is None:
                continue
            level = match.group(1) or match.group(2)
            counts[level] += 1
            if level != "WARNING" and len(examples) < LOG_EXAMPLES:
                examples.append(_log_example(line))
        if counts:
            findings[path.name] = {"counts": dict(counts), "first_errors": examples}
    return findings


# --- Redis ------------------------------------------------------------------------------------


def jobs_namespace(stack: PrivateStack) -> str:
    return stack.stack_env().get("JOBS_NAMESPACE") or DEFAULT_JOBS_NAMESPACE


def redis_memory(stack: PrivateStack) -> dict[str, Any]:
    """Redis's memory, its cap, and the bytes the predictor counts for the answers it keeps."""
    with redis.Redis.from_url(stack.redis_url, socket_timeout=10) as client:
        memory = client.info("memory")
        kept = client.get(FeedbackKeys(jobs_namespace(stack)).prediction_bytes)
    return {
        "used_memory": memory["used_memory"],
        "maxmemory": memory.get("maxmemory", 0),
        "maxmemory_policy": memory.get("maxmemory_policy"),
        "kept_answer_bytes": int(kept or 0),
    }


def feedback_store_report(
    stack: PrivateStack, answered: set[str], log_dir: Path, clock: Clock
) -> dict[str, Any]:
    """How many answered requests the predictor kept in Redis for POST /feedback (best effort
    by design: a Redis outage drops them, counted in iris_prediction_store_failures_total)."""
    keys = FeedbackKeys(jobs_namespace(stack))
    with redis.Redis.from_url(stack.redis_url, socket_timeout=30, decode_responses=True) as client:
        kept = set(client.zrange(keys.predictions_index, 0, -1))
    not_kept = answered - kept
    times = logged_times(log_dir, not_kept) if not_kept else []
    return {
        "index": keys.predictions_index,
        "answered": len(answered),
        "kept": len(answered & kept),
        "not_kept": len(not_kept),
        "not_kept_answered_from_s": clock.at(times[0]) if times else None,
        "not_kept_answered_to_s": clock.at(times[-1]) if times else None,
    }


# --- the machine ------------------------------------------------------------------------------

# The serving path and its baseline; the services' own declared dependencies are added.
LIBRARIES = (
    *("mlflow", "scikit-learn", "fastapi", "uvicorn", "starlette", "pydantic", "numpy", "pandas"),
    *("scipy", "uvloop", "httptools", "granian", "orjson", "httpx", "prometheus-client"),
    *("celery", "redis", "supervisor"),
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
        try:
            if not name.startswith("iris-"):
                versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return run.stdout

    # Not stripped: that would eat the first line's leading status column.
    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "dirty": bool(changed),
        "changed_files": changed,
    }
