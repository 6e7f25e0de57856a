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


def _rps(summary: Summary) -> str:
    return f"{summary.requests_per_s:,.0f} req/s"


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
