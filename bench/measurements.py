"""What a run reads off the stack: the memory of process trees, the predictor's own counts of its
recording, and, after `make soak`, its prediction log checked against the answers and the
warnings and errors in every service's log.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import child_pids
from iris_predictor.prediction_log import log_files

# What the predictor says of its own recording (iris_predictor.recorder, .feedback).
RECORDING_SERIES = (
    "iris_prediction_log_waits_total",
    "iris_prediction_log_dropped_total",
    "iris_prediction_store_dropped_total",
)
LOG_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^(Traceback)")


def process_tree(pid: int) -> list[int]:
    return [pid, *(member for child in sorted(child_pids(pid)) for member in process_tree(child))]


def tree_memory(pid: int | None) -> dict[str, Any] | None:
    """RSS and PSS summed over the tree rooted at `pid`, and of its largest process (by RSS).
    RSS counts pages shared between forked workers once per process; PSS splits them."""
    if pid is None:
        return None
    per_process, members = [], process_tree(pid)
    for member in members:
        kib = {"Rss": 0, "Pss": 0}
        with suppress(OSError):  # ended meanwhile
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
            kib |= {k: int(v) for k, v in re.findall(r"^(Rss|Pss):\s+(\d+)", text, re.M)}
        per_process.append((kib["Rss"] / 1024, kib["Pss"] / 1024))
    (rss, pss), largest = map(sum, zip(*per_process, strict=True)), max(per_process)
    return {
        "processes": len(per_process),
        **{"rss_mib": round(rss, 1), "pss_mib": round(pss, 1)},
        **{"largest_rss_mib": round(largest[0], 1), "largest_pss_mib": round(largest[1], 1)},
        "per_process_rss_mib": [round(rss, 1) for rss, _ in per_process],
        "pids": members,
    }


def recording_counts(stack: PrivateStack) -> dict[str, float] | None:
    """The predictor's recording counters after the load rounds (summed over label values):
    requests that waited for the log, log records dropped, kept answers forgotten early."""
    try:
        text = httpx.get(f"{stack.predictor_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    counts = dict.fromkeys(RECORDING_SERIES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in counts:
                counts[sample.name] += sample.value
    return counts


def log_documents(directory: Path) -> tuple[list[dict[str, Any]], int]:
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
    documents, unreadable = log_documents(directory)
    logged = Counter(str(document.get("request_id")) for document in documents)
    result = {
        "directory": str(directory),
        "files": [{"name": p.name, "bytes": p.stat().st_size} for p in log_files(directory)],
        "lines": len(documents),
        "rows": sum(int(document.get("rows", 0)) for document in documents),
        "unreadable_lines": unreadable,
    }
    for key, ids in (
        ("answered_not_logged", sorted(answered - logged.keys())),
        ("logged_not_answered", sorted(logged.keys() - answered)),
        ("logged_twice", sorted(request_id for request_id, n in logged.items() if n > 1)),
    ):
        result |= {key: len(ids), f"{key}_examples": ids[:10]}
    return result


def service_log_findings(folders: list[Path]) -> dict[str, Any]:
    """Warnings, errors and tracebacks in every service's log, where a defect the counts do not
    show (a retried write, a swallowed error) usually shows; the first errors as time, logger,
    message and the exception they ended with."""
    findings: dict[str, Any] = {}
    for path in sorted(p for folder in folders for p in folder.glob("*.log")):
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            if (match := LOG_LEVEL.search(line)) is None:
                continue
            counts[level := match.group(1) or match.group(2)] += 1
            if level == "WARNING" or len(examples) >= 5:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                message = str(record.get("message", "")).strip().splitlines()[:1]
                raised = str(record.get("exc_info") or "").strip().splitlines()[-1:]
                named = [str(record.get("time")), str(record.get("logger"))]
                line = " | ".join([*named, *message, *raised])
            examples.append(line[:300])
        if counts:
            findings[path.name] = {"counts": dict(counts), "first_errors": examples}
    return findings
