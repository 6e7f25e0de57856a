"""The issue's goals, each checked against this run's medians: target, measured figure, met."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.config import BATCH_CONNECTIONS, BATCH_ROWS, CONNECTIONS, MLFLOW_SERVE_WORKERS
from bench.rounds import Summary
from bench.swap import SwapOutcome

MLFLOW = f"`mlflow models serve -w {MLFLOW_SERVE_WORKERS}`"


@dataclass(frozen=True)
class Goal:
    key: str
    goal: str
    target: str
    measured: str
    ratio: float | None
    met: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _at_least(
    key: str,
    goal: str,
    ours: Summary | None,
    theirs: Summary | None,
    field: str,
    times: float,
    missing: str = "not measured",
) -> Goal:
    target = f"≥ {times:g}x"
    if ours is None or theirs is None:
        return Goal(key, goal, target, missing, None, False)
    ratio = getattr(ours, field) / getattr(theirs, field) if getattr(theirs, field) else None
    unit = "rows/s" if field == "rows_per_s" else "req/s"
    measured = f"{getattr(ours, field):,.0f} vs {getattr(theirs, field):,.0f} {unit}"
    met = ratio is not None and ratio >= times
    return Goal(key, goal, target, measured, None if ratio is None else round(ratio, 3), met)


def evaluate_goals(
    summaries: dict[str, Summary],
    swap: SwapOutcome | None,
    swap_error: str | None,
    constant_error: str | None,
) -> list[Goal]:
    predictor, mlflow = summaries.get("predictor"), summaries.get("mlflow")
    gateway, constant = summaries.get("gateway"), summaries.get("constant")
    goals = [
        _at_least(
            "predictor_throughput",
            f"Predictor vs {MLFLOW}, one row, {CONNECTIONS} connections: requests/s",
            predictor,
            mlflow,
            "requests_per_s",
            10,
        ),
    ]
    if predictor is not None and mlflow is not None and predictor.p99_ms > 0:
        p99_ratio = round(predictor.p99_ms / mlflow.p99_ms, 3)
        goals.append(
            Goal(
                "predictor_p99",
                f"Predictor vs {MLFLOW}, one row, {CONNECTIONS} connections: p99 latency",
                "≤ 1/5 (0.2x)",
                f"{predictor.p99_ms:,.1f} vs {mlflow.p99_ms:,.1f} ms",
                p99_ratio,
                p99_ratio <= 0.2,
            )
        )
    else:
        goals.append(
            Goal("predictor_p99", "Predictor p99 latency", "≤ 1/5", "not measured", None, False)
        )
    goals.append(
        _at_least(
            "gateway_throughput",
            f"Gateway (the path users call) vs {MLFLOW}, one row: requests/s",
            gateway,
            mlflow,
            "requests_per_s",
            5,
        )
    )
    goals.append(
        Goal(
            "gateway_errors",
            "Gateway, all load rounds: failed requests (non-2xx and socket errors)",
            "0",
            "not measured" if gateway is None else f"{gateway.failed:,}",
            None,
            gateway is not None and gateway.failed == 0,
        )
    )
    goals.append(
        _at_least(
            "batch_throughput",
            f"Predictor vs {MLFLOW}, {BATCH_ROWS:,}-row batches, "
            f"{BATCH_CONNECTIONS} connections: rows/s",
            summaries.get("predictor-batch"),
            summaries.get("mlflow-batch"),
            "rows_per_s",
            5,
        )
    )
    goals.append(
        _at_least(
            "predictor_vs_constant",
            "Predictor vs a constant-answer endpoint on the same server stack: requests/s",
            predictor,
            constant,
            "requests_per_s",
            0.5,
            missing=_not_measured(constant_error),
        )
    )
    goals.extend(_swap_goals(swap, swap_error))
    return goals


def _not_measured(error: str | None) -> str:
    """ "not measured", with the first line of the reason when there is one."""
    return f"not measured: {error.splitlines()[0]}" if error else "not measured"


def _swap_goals(swap: SwapOutcome | None, error: str | None) -> list[Goal]:
    if swap is None:
        why = _not_measured(error)
        return [
            Goal("swap_errors", "Hot swap under load: failed requests", "0", why, None, False),
            Goal(
                "swap_time",
                "Hot swap under load: new version served",
                "≤ 2x poll",
                why,
                None,
                False,
            ),
        ]
    limit = 2 * swap.predictor_poll_interval_s
    served = swap.all_new_answers_s
    return [
        Goal(
            "swap_errors",
            f"Hot swap under load (gateway, {CONNECTIONS} connections): failed requests",
            "0",
            f"{swap.load.failed:,} of {swap.load.requests:,}",
            None,
            swap.load.failed == 0,
        ),
        Goal(
            "swap_time",
            f"Hot swap: alias moved → every answer names version {swap.to_version}",
            f"≤ {limit:g} s (2 x poll interval {swap.predictor_poll_interval_s:g} s)",
            "never within the wait" if served is None else f"{served:.2f} s",
            None,
            served is not None and served <= limit,
        ),
    ]


# The peers' load names (bench/run.py), and what each is called in the goals.
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
BATCH_PEERS = (
    "mlserver-batch",
    "mlserver-binary-batch",
    "bentoml-batch",
    "mlflow-batch",
    "mlflow-batch-split",
    "mlflow-batch-csv",
)


def best_of(
    summaries: dict[str, Summary], names: tuple[str, ...], field: str
) -> tuple[str, Summary] | None:
    """The measured load among `names` with the highest `field`; None when none was measured."""
    measured = [(name, summaries[name]) for name in names if name in summaries]
    if not measured:
        return None
    return max(measured, key=lambda entry: float(getattr(entry[1], field)))


def _against_best(
    key: str,
    goal: str,
    ours: Summary | None,
    summaries: dict[str, Summary],
    peers: tuple[str, ...],
    field: str,
    times: float,
    missing: str,
) -> Goal:
    best = best_of(summaries, peers, field)
    found = _at_least(key, goal, ours, None if best is None else best[1], field, times, missing)
    if best is None or ours is None:
        return found
    return Goal(
        key,
        goal,
        found.target,
        f"{found.measured} ({PEER_LABELS.get(best[0], best[0])})",
        found.ratio,
        found.met,
    )


def lowest_p99_goal(
    ours: Summary | None, summaries: dict[str, Summary], peers: tuple[str, ...], missing: str
) -> Goal:
    """p99 against the peer with the lowest p99, which is stricter than against the fastest."""
    goal = f"Predictor `POST /predict` vs the peers, one row, {CONNECTIONS} connections: p99"
    target = "≤ 1/5 (0.2x) of the lowest peer p99"
    measured = [(name, summaries[name]) for name in peers if name in summaries]
    if ours is None or not measured:
        return Goal("peers_one_row_p99", goal, target, missing, None, False)
    name, peer = min(measured, key=lambda entry: entry[1].p99_ms)
    ratio = round(ours.p99_ms / peer.p99_ms, 3) if peer.p99_ms else None
    return Goal(
        "peers_one_row_p99",
        goal,
        target,
        f"{ours.p99_ms:,.1f} vs {peer.p99_ms:,.1f} ms ({PEER_LABELS.get(name, name)})",
        ratio,
        ratio is not None and ratio <= 0.2,
    )


def memory_goals(memory: dict[str, Any]) -> list[Goal]:
    """Each predictor process ≤ MLServer's largest, the whole predictor ≤ ½ of
    `mlflow models serve -w 2`'s: met only when both RSS and PSS are within."""
    predictor = memory.get("predictor")
    mlserver = memory.get("MLServer")
    mlflow_serve = memory.get(f"mlflow models serve -w {MLFLOW_SERVE_WORKERS}")
    goals = []
    goal = "Memory: the predictor's largest process vs MLServer's largest (RSS and PSS)"
    if predictor and mlserver:
        rss = predictor["largest_rss_mib"] / mlserver["largest_rss_mib"]
        pss = predictor["largest_pss_mib"] / mlserver["largest_pss_mib"]
        goals.append(
            Goal(
                "memory_worker_vs_mlserver",
                goal,
                "≤ 1x",
                f"RSS {predictor['largest_rss_mib']:,.0f} vs {mlserver['largest_rss_mib']:,.0f} "
                f"MiB, PSS {predictor['largest_pss_mib']:,.0f} vs "
                f"{mlserver['largest_pss_mib']:,.0f} MiB",
                round(max(rss, pss), 3),
                rss <= 1 and pss <= 1,
            )
        )
    else:
        goals.append(Goal("memory_worker_vs_mlserver", goal, "≤ 1x", "not measured", None, False))
    goal = f"Memory: the whole predictor vs {MLFLOW} (RSS and PSS, process trees)"
    if predictor and mlflow_serve:
        rss = predictor["rss_mib"] / mlflow_serve["rss_mib"]
        pss = predictor["pss_mib"] / mlflow_serve["pss_mib"]
        goals.append(
            Goal(
                "memory_total_vs_mlflow",
                goal,
                "≤ 1/2 (0.5x)",
                f"RSS {predictor['rss_mib']:,.0f} vs {mlflow_serve['rss_mib']:,.0f} MiB, "
                f"PSS {predictor['pss_mib']:,.0f} vs {mlflow_serve['pss_mib']:,.0f} MiB",
                round(max(rss, pss), 3),
                rss <= 0.5 and pss <= 0.5,
            )
        )
    else:
        goals.append(
            Goal("memory_total_vs_mlflow", goal, "≤ 1/2 (0.5x)", "not measured", None, False)
        )
    return goals


def evaluate_peer_goals(
    summaries: dict[str, Summary], memory: dict[str, Any], missing: dict[str, str]
) -> list[Goal]:
    """The issue's goals against MLServer, BentoML and `mlflow models serve`, from this run.

    `missing` says, per load name, why it was not measured (a peer that did not start, a
    protocol this predictor does not serve); a goal that needs it is reported not met with it.
    """

    def why(*names: str) -> str:
        reasons = [f"{name}: {missing[name]}" for name in names if name in missing]
        return _not_measured("; ".join(reasons) if reasons else None)

    get = summaries.get
    batch = f"{BATCH_ROWS:,}-row batches, {BATCH_CONNECTIONS} connections"
    one = f"one row, {CONNECTIONS} connections"
    return [
        _against_best(
            "peers_one_row_throughput",
            f"Predictor `POST /predict` vs the faster peer on its own protocol, {one}: req/s",
            get("predictor"),
            summaries,
            ONE_ROW_PEERS,
            "requests_per_s",
            10,
            why("predictor", *ONE_ROW_PEERS),
        ),
        lowest_p99_goal(get("predictor"), summaries, ONE_ROW_PEERS, why("predictor")),
        _at_least(
            "v2_json_one_row",
            f"V2 JSON vs MLServer V2 JSON, same body, {one}: req/s",
            get("predictor-v2"),
            get("mlserver"),
            "requests_per_s",
            10,
            why("predictor-v2", "mlserver"),
        ),
        _at_least(
            "v2_json_batch",
            f"V2 JSON vs MLServer V2 JSON, same body, {batch}: rows/s",
            get("predictor-v2-batch"),
            get("mlserver-batch"),
            "rows_per_s",
            2,
            why("predictor-v2-batch", "mlserver-batch"),
        ),
        _against_best(
            "v2_binary_batch",
            f"V2 binary, {batch}, vs the faster peer's best batch figure on any protocol: rows/s",
            get("predictor-v2-binary-batch"),
            summaries,
            BATCH_PEERS,
            "rows_per_s",
            5,
            why("predictor-v2-binary-batch"),
        ),
        _at_least(
            "native_batch_vs_mlserver",
            f"`POST /predict/batch` vs MLServer V2 JSON, {batch}: rows/s",
            get("predictor-batch"),
            get("mlserver-batch"),
            "rows_per_s",
            2,
            why("predictor-batch", "mlserver-batch"),
        ),
        _at_least(
            "invocations_one_row",
            f"`/invocations` vs {MLFLOW}, same body, {one}: req/s",
            get("predictor-invocations"),
            get("mlflow"),
            "requests_per_s",
            10,
            why("predictor-invocations", "mlflow"),
        ),
        _at_least(
            "invocations_split_batch",
            f"`/invocations` dataframe_split vs {MLFLOW}, same body, {batch}: rows/s",
            get("predictor-invocations-batch"),
            # run.py adds "mlflow-batch-split" only when mlflow's own batch shape is another.
            get("mlflow-batch-split") or get("mlflow-batch"),
            "rows_per_s",
            5,
            why("predictor-invocations-batch", "mlflow-batch-split"),
        ),
        _at_least(
            "invocations_csv_batch",
            f"`/invocations` text/csv vs {MLFLOW}, same body, {batch}: rows/s",
            get("predictor-invocations-csv-batch"),
            get("mlflow-batch-csv"),
            "rows_per_s",
            5,
            why("predictor-invocations-csv-batch", "mlflow-batch-csv"),
        ),
        *memory_goals(memory),
    ]
