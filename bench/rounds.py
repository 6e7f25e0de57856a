"""Load rounds that alternate the servers, so drift on a shared machine hits all of them alike.

Each target gets a short warm-up, then every round runs each target once, in a fixed order.
A server's figure is the median over its rounds; ratios are taken between medians.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.config import BenchSettings
from bench.console import say
from bench.wrk import Target, WrkResult, run_wrk


@dataclass(frozen=True)
class Load:
    target: Target
    connections: int
    request: str  # for the report: what is sent


@dataclass(frozen=True)
class Summary:
    """One target's medians over its rounds."""

    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failed: int
    errors: dict[str, int]

    @classmethod
    def of(cls, rounds: list[WrkResult]) -> Summary:
        def median(values: list[float]) -> float:
            return round(statistics.median(values), 3)

        errors = {key: sum(r.errors[key] for r in rounds) for key in rounds[0].errors}
        return cls(
            requests_per_s=median([r.ok_requests_per_s for r in rounds]),
            rows_per_s=median([r.ok_rows_per_s for r in rounds]),
            p50_ms=median([r.latency_ms["p50"] for r in rounds]),
            p90_ms=median([r.latency_ms["p90"] for r in rounds]),
            p99_ms=median([r.latency_ms["p99"] for r in rounds]),
            max_ms=max(r.latency_ms["max"] for r in rounds),
            failed=sum(errors.values()),
            errors=errors,
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe(result: WrkResult) -> str:
    return (
        f"{result.ok_requests_per_s:9.1f} req/s  p50 {result.latency_ms['p50']:7.2f} ms  "
        f"p99 {result.latency_ms['p99']:8.2f} ms  failed {result.failed}"
    )


def pick_mlflow_shape(candidates: dict[str, Target], connections: int, seconds: float) -> str:
    """The input shape `mlflow models serve` answers fastest, from a short probe of each."""
    speeds: dict[str, float] = {}
    for shape, target in candidates.items():
        result = run_wrk(target, seconds, connections)
        say(f"probe {target.name} as {shape}: {describe(result)}")
        # A shape the server refuses is no option, however fast the refusals come.
        speeds[shape] = result.ok_requests_per_s if result.failed == 0 else -1.0
    return max(speeds, key=lambda shape: speeds[shape])


def run_rounds(loads: list[Load], settings: BenchSettings) -> dict[str, list[WrkResult]]:
    for load in loads:
        run_wrk(load.target, settings.warmup_seconds, load.connections)
        say(f"warmed up {load.target.name}")
    results: dict[str, list[WrkResult]] = {load.target.name: [] for load in loads}
    for number in range(1, settings.rounds + 1):
        for load in loads:
            result = run_wrk(load.target, settings.round_seconds, load.connections)
            results[load.target.name].append(result)
            say(f"round {number}/{settings.rounds} {load.target.name:<16} {describe(result)}")
    return results
