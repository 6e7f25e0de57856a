"""The benchmark's settings: what the goals fix is a constant, how long to measure comes from
the environment (BENCH_ROUNDS, BENCH_SECONDS, ...) with defaults that keep `make bench` well
under 15 minutes on a 2-core machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_JSON = ROOT / "bench" / "results.json"
README = ROOT / "README.md"

MODEL_NAME = "Iris-LogisticRegression"
# The goals are stated for these loads; changing them changes what the goals mean.
CONNECTIONS = 32
BATCH_CONNECTIONS = 4
BATCH_ROWS = 1000
MLFLOW_SERVE_WORKERS = 2
WRK_THREADS = 2
WRK_TIMEOUT = "10s"


def _whole_number(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


@dataclass(frozen=True)
class BenchSettings:
    rounds: int
    round_seconds: int
    warmup_seconds: int
    probe_seconds: int

    @classmethod
    def from_env(cls) -> BenchSettings:
        return cls(
            rounds=_whole_number("BENCH_ROUNDS", 3),
            round_seconds=_whole_number("BENCH_SECONDS", 8),
            warmup_seconds=_whole_number("BENCH_WARMUP_SECONDS", 3),
            probe_seconds=_whole_number("BENCH_PROBE_SECONDS", 2),
        )


def command_line() -> str:
    """`make bench` with the BENCH_ variables of this run in front, as someone would retype it."""
    overrides = [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if k.startswith("BENCH_") and k != "BENCH_NOTE" and v
    ]
    return " ".join([*overrides, "make bench"])
