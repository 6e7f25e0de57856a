"""Memory of a service: summed over its whole process tree (server, workers, helpers).

RSS counts pages shared between forked workers once per process; PSS splits them, so the PSS
sum is what the tree really holds. Both are reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
    for line in lines:
        fields = line.split()
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
