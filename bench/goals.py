"""The goals of `make bench` as records, each evaluated against this run's figures by one function.

A goal compares a figure of ours with a peer's (a ratio, at least or at most a limit) or holds
a figure of ours to a limit. Figures are named: a load's medians by the load's name
(`predictor`, `mlflow-batch`, ...), a process tree's memory as `memory:<server>`, the hot swap
as `swap`. A goal whose figure is missing is not met, and says why when `missing` knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bench.common import MLFLOW_SERVE_WORKERS
from bench.loads import BATCH_CONNECTIONS, BATCH_ROWS, CONNECTIONS

MLFLOW = f"`mlflow models serve -w {MLFLOW_SERVE_WORKERS}`"
ONE = f"one row, {CONNECTIONS} connections"
BATCH = f"{BATCH_ROWS:,}-row batches, {BATCH_CONNECTIONS} connections"
REQUESTS, ROWS = "{a:,.0f} vs {b:,.0f} req/s", "{a:,.0f} vs {b:,.0f} rows/s"
P99 = "{a:,.1f} vs {b:,.1f} ms"
MEMORY = "RSS {ours[%srss_mib]:,.0f} vs {theirs[%srss_mib]:,.0f} MiB, "
MEMORY += "PSS {ours[%spss_mib]:,.0f} vs {theirs[%spss_mib]:,.0f} MiB"
# The peers' load names, and what each is called when a goal picks one of several.
PEER_LABELS = {
    "mlserver": "MLServer V2 JSON",
    "bentoml": "BentoML JSON",
    "mlflow": "mlflow models serve",
    "mlserver-batch": "MLServer V2 JSON",
    "mlserver-binary-batch": "MLServer V2 binary",
    "bentoml-batch": "BentoML JSON",
    "mlflow-batch": "mlflow models serve",
    "mlflow-batch-split": "mlflow models serve dataframe_split",
    "mlflow-batch-csv": "mlflow models serve text/csv",
}
ONE_ROW_PEERS = ("mlserver", "bentoml", "mlflow")
BATCH_PEERS = tuple(name for name in PEER_LABELS if "-batch" in name)


@dataclass(frozen=True)
class GoalRecord:
    """`ours` against the `theirs` that `pick` chooses (the highest, the lowest or the first
    measured of `fields[0]`), the ratio of each field taken and the largest held to `limit`;
    without `theirs`, the figure `fields[0]` of ours itself held to `limit`. `measured`
    formats a, b (the first field of each) and ours, theirs (all figures)."""

    key: str
    goal: str
    target: str
    limit: float
    ours: str
    theirs: tuple[str, ...] = ()
    fields: tuple[str, ...] = ("requests_per_s",)
    measured: str = REQUESTS
    at_most: bool = False
    pick: Literal["highest", "lowest", "first"] = "highest"
    unmeasured: str = "not measured"  # what `measured` says when ours has no value

    def holds(self, value: float | None) -> bool:
        return value is not None and (value <= self.limit if self.at_most else value >= self.limit)


def _at_least(
    key: str, goal: str, ours: str, theirs: str | tuple[str, ...], limit: float, rows: bool = False
) -> GoalRecord:
    """Ours at least `limit` times theirs (the best of several) in req/s or rows/s."""
    peers = (theirs,) if isinstance(theirs, str) else theirs
    field, measured = ("rows_per_s", ROWS) if rows else ("requests_per_s", REQUESTS)
    return GoalRecord(key, goal, f"≥ {limit:g}x", limit, ours, peers, (field,), measured)


def _memory(key: str, goal: str, target: str, limit: float, theirs: str, prefix: str) -> GoalRecord:
    """The predictor's memory at most `limit` times theirs, in both RSS and PSS."""
    fields, measured = (f"{prefix}rss_mib", f"{prefix}pss_mib"), MEMORY % ((prefix,) * 4)
    ours, peers = "memory:predictor", (f"memory:{theirs}",)
    return GoalRecord(key, goal, target, limit, ours, peers, fields, measured, at_most=True)


def bench_goals(poll_interval_s: float, new_version: str) -> list[GoalRecord]:
    """Every goal of `make bench`, in the order the report lists them."""
    swap_limit, poll = 2 * poll_interval_s, f"{poll_interval_s:g}"
    predict, same, invocations = (
        "Predictor `POST /predict` vs the",
        "same body",
        "predictor-invocations",
    )
    return [
        _at_least("predictor_throughput", f"Predictor vs {MLFLOW}, {ONE}: requests/s",
                  "predictor", "mlflow", 10),
        GoalRecord("predictor_p99", f"Predictor vs {MLFLOW}, {ONE}: p99 latency", "≤ 1/5 (0.2x)",
                   0.2, "predictor", ("mlflow",), ("p99_ms",), P99, at_most=True),
        _at_least("gateway_throughput",
                  f"Gateway (the path users call) vs {MLFLOW}, one row: requests/s",
                  "gateway", "mlflow", 5),
        GoalRecord("gateway_errors",
                   "Gateway, all load rounds: failed requests (non-2xx and socket errors)",
                   "0", 0, "gateway", fields=("failed",), measured="{a:,}", at_most=True),
        _at_least("batch_throughput", f"Predictor vs {MLFLOW}, {BATCH}: rows/s",
                  "predictor-batch", "mlflow-batch", 5, rows=True),
        _at_least("predictor_vs_constant",
                  "Predictor vs a constant-answer endpoint on the same server stack: requests/s",
                  "predictor", "constant", 0.5),
        GoalRecord("swap_errors",
                   f"Hot swap under load (gateway, {CONNECTIONS} connections): failed requests",
                   "0", 0, "swap", fields=("failed",), measured="{a:,} of {ours[requests]:,}",
                   at_most=True),
        GoalRecord("swap_time", f"Hot swap: alias moved → every answer names version {new_version}",
                   f"≤ {swap_limit:g} s (2 x poll interval {poll} s)", swap_limit, "swap",
                   fields=("all_new_answers_s",), measured="{a:.2f} s", at_most=True,
                   unmeasured="never within the wait"),
        _at_least("peers_one_row_throughput",
                  f"{predict} faster peer on its own protocol, {ONE}: req/s",
                  "predictor", ONE_ROW_PEERS, 10),
        GoalRecord("peers_one_row_p99", f"{predict} peers, {ONE}: p99",
                   "≤ 1/5 (0.2x) of the lowest peer p99", 0.2, "predictor", ONE_ROW_PEERS,
                   ("p99_ms",), P99, at_most=True, pick="lowest"),
        _at_least("v2_json_one_row", f"V2 JSON vs MLServer V2 JSON, {same}, {ONE}: req/s",
                  "predictor-v2", "mlserver", 10),
        _at_least("v2_json_batch", f"V2 JSON vs MLServer V2 JSON, {same}, {BATCH}: rows/s",
                  "predictor-v2-batch", "mlserver-batch", 2, rows=True),
        _at_least("v2_binary_batch",
                  f"V2 binary, {BATCH}, vs the faster peer's best batch figure on any protocol: "
                  "rows/s", "predictor-v2-binary-batch", BATCH_PEERS, 5, rows=True),
        _at_least("native_batch_vs_mlserver",
                  f"`POST /predict/batch` vs MLServer V2 JSON, {BATCH}: rows/s",
                  "predictor-batch", "mlserver-batch", 2, rows=True),
        _at_least("invocations_one_row", f"`/invocations` vs {MLFLOW}, {same}, {ONE}: req/s",
                  invocations, "mlflow", 10),
        # "mlflow-batch-split" is measured only when mlflow's own batch shape is another.
        GoalRecord("invocations_split_batch",
                   f"`/invocations` dataframe_split vs {MLFLOW}, {same}, {BATCH}: rows/s",
                   "≥ 5x", 5, f"{invocations}-batch", ("mlflow-batch-split", "mlflow-batch"),
                   ("rows_per_s",), ROWS, pick="first"),
        _at_least("invocations_csv_batch",
                  f"`/invocations` text/csv vs {MLFLOW}, {same}, {BATCH}: rows/s",
                  f"{invocations}-csv-batch", "mlflow-batch-csv", 5, rows=True),
        _memory("memory_worker_vs_mlserver",
                "Memory: the predictor's largest process vs MLServer's largest (RSS and PSS)",
                "≤ 1x", 1, "MLServer", "largest_"),
        _memory("memory_total_vs_mlflow",
                f"Memory: the whole predictor vs {MLFLOW} (RSS and PSS, process trees)",
                "≤ 1/2 (0.5x)", 0.5, f"mlflow models serve -w {MLFLOW_SERVE_WORKERS}", ""),
    ]  # fmt: skip


def evaluate(
    record: GoalRecord, figures: dict[str, dict[str, Any]], missing: dict[str, str]
) -> dict[str, Any]:
    """The goal's verdict from the named figures; `missing` says, per figure, why it is absent."""
    verdict: dict[str, Any] = {"key": record.key, "goal": record.goal, "target": record.target}
    field, ours = record.fields[0], figures.get(record.ours)
    measured = [(name, figures[name]) for name in record.theirs if name in figures]
    if ours is None or (record.theirs and not measured):
        names = (record.ours, *record.theirs)
        reasons = "; ".join(f"{name}: {missing[name]}" for name in names if name in missing)
        why = "not measured" + (f": {reasons.splitlines()[0]}" if reasons else "")
        return verdict | {"measured": why, "ratio": None, "met": False}
    if not record.theirs:
        value = ours.get(field)
        text = record.unmeasured if value is None else record.measured.format(a=value, ours=ours)
        return verdict | {"measured": text, "ratio": None, "met": record.holds(value)}
    chooser = {"highest": max, "lowest": min}.get(record.pick)
    name, theirs = chooser(measured, key=lambda m: float(m[1][field])) if chooser else measured[0]
    ratios = [ours[f] / theirs[f] if theirs[f] else None for f in record.fields]
    ratio = None if None in ratios else max(r for r in ratios if r is not None)
    text = record.measured.format(a=ours[field], b=theirs[field], ours=ours, theirs=theirs)
    if len(record.theirs) > 1 and record.pick != "first":
        text += f" ({PEER_LABELS.get(name, name)})"
    rounded = None if ratio is None else round(ratio, 3)
    return verdict | {"measured": text, "ratio": rounded, "met": record.holds(ratio)}


def evaluate_all(
    figures: dict[str, dict[str, Any]],
    missing: dict[str, str],
    poll_interval_s: float = 5.0,
    new_version: str = "the next",
) -> list[dict[str, Any]]:
    return [evaluate(r, figures, missing) for r in bench_goals(poll_interval_s, new_version)]
