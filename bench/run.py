"""`make bench`: the serving path against `mlflow models serve`, side by side, in one run.

In order:
  1. a private Redis and a second local stack (scripts/stack.py up on free ports, its own state
     folder and API token), which trains the baseline: version 1, alias `production`;
  2. `mlflow models serve -w 2` on that same version, and a constant-answer endpoint launched
     with the predictor's own command line;
  3. wrk rounds that alternate predictor, mlflow, gateway, constant, predictor batch and mlflow
     batch, so drift on a shared machine hits all alike; medians and ratios per server;
  4. memory of every service's process tree, right after the load;
  5. a hot swap under load: version 2 trained with the CLI, `production` moved to it while wrk
     drives the gateway;
  6. a retrain through the gateway, timed stage by stage; the predictor's cold start;
  7. bench/results.json, bench/results.md and the README's goals table.

Settings: BENCH_ROUNDS (3), BENCH_SECONDS (8 per round), BENCH_WARMUP_SECONDS (3),
BENCH_PROBE_SECONDS (2). Run from the repository root: `python -m bench.run`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench import payloads
from bench.baselines import RunningServer, start_constant_server, start_mlflow_serve
from bench.cold_start import predictor_cold_start
from bench.config import (
    BATCH_CONNECTIONS,
    BATCH_ROWS,
    CONNECTIONS,
    README,
    RESULTS_JSON,
    RESULTS_MD,
    ROOT,
    WRK_THREADS,
    WRK_TIMEOUT,
    BenchSettings,
    command_line,
)
from bench.console import say, timed
from bench.goals import evaluate_goals
from bench.local_stack import BenchStack
from bench.machine import git_commit, library_versions, load_average, machine
from bench.memory import tree_memory
from bench.report import update_readme, write_results
from bench.retrain import retrain_breakdown
from bench.rounds import Load, Summary, pick_mlflow_shape, run_rounds
from bench.swap import SwapOutcome, hot_swap_under_load
from bench.wrk import Target, WrkResult, wrk_version
from iris_predictor.config import PredictorSettings

T = TypeVar("T")


@dataclass
class Servers:
    """What the load rounds drive, and the JSON shape mlflow gets for one row and for batches."""

    loads: list[Load]
    mlflow_shape: dict[str, str]


def attempt(what: str, step: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run a report step; its failure is recorded in the results instead of ending the run."""
    try:
        return step(), None
    except Exception as exc:
        say(f"{what} failed: {exc}")
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {exc}"


def check_answers(target: Target) -> None:
    """One request before any load: a refusal stops here with the server's own words."""
    assert target.body_file is not None
    response = httpx.post(
        target.url,
        content=target.body_file.read_bytes(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{target.name} answered {response.status_code}: {response.text[:500]}")


def build_servers(
    stack: BenchStack,
    mlflow: RunningServer,
    constant: RunningServer | None,
    bodies: Path,
    settings: BenchSettings,
) -> Servers:
    flower = payloads.FLOWER
    flowers = payloads.iris_flowers(BATCH_ROWS)
    one = payloads.write_body(bodies, "one-row", flower)
    batch = payloads.write_body(bodies, "batch", payloads.predictor_batch(flowers))
    invocations = f"{mlflow.url}/invocations"

    shapes: dict[str, str] = {}
    for kind, rows, connections in (
        ("one_row", [flower], CONNECTIONS),
        ("batch", flowers, BATCH_CONNECTIONS),
    ):
        candidates = {
            shape: Target(
                f"mlflow-{kind}-{shape}",
                invocations,
                payloads.write_body(
                    bodies, f"mlflow-{kind}-{shape}", payloads.mlflow_body(rows, shape)
                ),
                len(rows),
            )
            for shape in payloads.MLFLOW_FORMATS
        }
        shapes[kind] = pick_mlflow_shape(candidates, connections, settings.probe_seconds)
        say(f"mlflow models serve: {kind} as {shapes[kind]}")

    def mlflow_body(kind: str) -> Path:
        return bodies / f"mlflow-{kind}-{shapes[kind]}.json"

    batch_rows = f"{BATCH_ROWS:,} rows"
    predictor, gateway = stack.predictor_url, stack.gateway_url
    loads = [
        Load(Target("predictor", f"{predictor}/predict", one), CONNECTIONS, "POST /predict"),
        Load(
            Target("mlflow", invocations, mlflow_body("one_row")),
            CONNECTIONS,
            f"POST /invocations ({shapes['one_row']})",
        ),
        Load(Target("gateway", f"{gateway}/predict", one), CONNECTIONS, "POST /predict (gateway)"),
    ]
    if constant is not None:
        loads.append(
            Load(
                Target("constant", f"{constant.url}/predict", one),
                CONNECTIONS,
                "POST /predict (constant answer)",
            )
        )
    loads += [
        Load(
            Target("predictor-batch", f"{predictor}/predict/batch", batch, BATCH_ROWS),
            BATCH_CONNECTIONS,
            f"POST /predict/batch, {batch_rows}",
        ),
        Load(
            Target("mlflow-batch", invocations, mlflow_body("batch"), BATCH_ROWS),
            BATCH_CONNECTIONS,
            f"POST /invocations ({shapes['batch']}), {batch_rows}",
        ),
    ]
    for load in loads:
        check_answers(load.target)
    return Servers(loads=loads, mlflow_shape=shapes)


def poll_interval_s(stack: BenchStack) -> float:
    """The alias poll interval the stack's predictor runs with (environment, .env, default)."""
    configured = stack.stack_env().get("PREDICTOR_POLL_INTERVAL_S")
    if configured:
        return float(configured)
    return float(PredictorSettings.model_fields["poll_interval_s"].default)


def train_next_version(stack: BenchStack) -> tuple[str, float]:
    """Register a new version with the CLI (as `make train` does); its number and seconds."""
    started = time.monotonic()
    log = stack.logs / "train-v2.log"
    with log.open("ab") as out:
        subprocess.run(
            [str(Path(sys.executable).parent / "iris-mlops"), "train"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return stack.latest_version(), round(time.monotonic() - started, 2)


def memory_by_service(stack: BenchStack, mlflow: RunningServer) -> dict[str, Any]:
    programs = {
        "predictor": "predictor",
        "gateway": "gateway",
        "trainer worker": "trainer",
        "MLflow server": "mlflow",
    }
    memory = {name: tree_memory(stack.pid(program)) for name, program in programs.items()}
    memory["mlflow models serve -w 2"] = tree_memory(mlflow.process.pid)
    return memory


def summarize(
    servers: Servers, rounds: dict[str, list[WrkResult]]
) -> tuple[dict[str, Summary], dict[str, Any]]:
    summaries = {name: Summary.of(results) for name, results in rounds.items()}
    table = {
        load.target.name: {
            "url": load.target.url,
            "request": load.request,
            "connections": load.connections,
            "rows_per_request": load.target.rows_per_request,
            "median": summaries[load.target.name].as_dict(),
            "rounds": [result.as_dict() for result in rounds[load.target.name]],
        }
        for load in servers.loads
    }
    return summaries, table


def ratios(summaries: dict[str, Summary]) -> dict[str, float | None]:
    def ratio(ours: str, theirs: str, field: str) -> float | None:
        a, b = summaries.get(ours), summaries.get(theirs)
        if a is None or b is None or not getattr(b, field):
            return None
        return round(float(getattr(a, field)) / float(getattr(b, field)), 3)

    return {
        "predictor_over_mlflow_requests_per_s": ratio("predictor", "mlflow", "requests_per_s"),
        "predictor_over_mlflow_p99": ratio("predictor", "mlflow", "p99_ms"),
        "gateway_over_mlflow_requests_per_s": ratio("gateway", "mlflow", "requests_per_s"),
        "gateway_over_predictor_requests_per_s": ratio("gateway", "predictor", "requests_per_s"),
        "batch_predictor_over_mlflow_rows_per_s": ratio(
            "predictor-batch", "mlflow-batch", "rows_per_s"
        ),
        "predictor_over_constant_requests_per_s": ratio("predictor", "constant", "requests_per_s"),
    }


def startup(server: RunningServer, how: str) -> dict[str, Any]:
    return {"seconds": round(server.startup_s, 2), "how": how}


@dataclass
class Comparison:
    """Steps 2 to 4: the medians the goals need, and the record for results.json."""

    summaries: dict[str, Summary]
    constant_error: str | None
    record: dict[str, Any]


@dataclass
class AfterLoad:
    """Steps 5 and 6: the hot swap the goals need, and the record for results.json."""

    swap: SwapOutcome | None
    swap_error: str | None
    record: dict[str, Any]


def compare_servers(
    stack: BenchStack, settings: BenchSettings, phases: dict[str, float]
) -> Comparison:
    """The baselines, the alternating load rounds, and memory right after the load."""
    version = stack.production_version()
    say(f"starting mlflow models serve -w 2 on version {version}, and the constant endpoint")
    with timed("start_baselines", phases):
        mlflow = start_mlflow_serve(stack, version)
        constant, constant_error = attempt("constant server", lambda: start_constant_server(stack))
    try:
        bodies = stack.work / "bodies"
        bodies.mkdir(exist_ok=True)
        with timed("probe_mlflow_shapes", phases):
            servers = build_servers(stack, mlflow, constant, bodies, settings)
        say(
            f"load: {settings.rounds} rounds of {settings.round_seconds} s per server, "
            f"{len(servers.loads)} servers alternated"
        )
        with timed("load_rounds", phases):
            summaries, table = summarize(servers, run_rounds(servers.loads, settings))
        memory = memory_by_service(stack, mlflow)
    finally:
        mlflow.process.stop()
        if constant is not None:
            constant.process.stop()

    cold_start = {
        "mlflow models serve -w 2": startup(
            mlflow, "process start → GET /ping 200 (the CLI downloads the model first)"
        )
    }
    if constant is not None:
        cold_start["constant endpoint"] = startup(constant, "process start → GET /readyz 200")
    record = {
        "model_version": version,
        "servers": {
            "predictor_workers": constant.workers if constant is not None else None,
            "constant_command": constant.command if constant is not None else None,
            "constant_error": constant_error,
            "mlflow_serve_command": mlflow.command,
        },
        "load": {
            "rounds": settings.rounds,
            "round_seconds": settings.round_seconds,
            "warmup_seconds": settings.warmup_seconds,
            "probe_seconds": settings.probe_seconds,
            "connections": CONNECTIONS,
            "batch_connections": BATCH_CONNECTIONS,
            "batch_rows": BATCH_ROWS,
            "wrk_threads": WRK_THREADS,
            "wrk_timeout": WRK_TIMEOUT,
            "order": [load.target.name for load in servers.loads],
            "mlflow_shape": servers.mlflow_shape,
            "servers": table,
        },
        "ratios": ratios(summaries),
        "cold_start": cold_start,
        "memory": memory,
    }
    return Comparison(summaries, constant_error, record)


def swap_and_retrain(stack: BenchStack, phases: dict[str, float]) -> AfterLoad:
    """A hot swap under load, a retrain timed by stage, and the predictor's cold start."""
    interval = poll_interval_s(stack)
    say("training the next version with the CLI for the hot swap")
    with timed("train_next_version", phases):
        trained, swap_error = attempt("training", lambda: train_next_version(stack))
    swap: SwapOutcome | None = None
    if trained is not None:
        new_version = trained[0]
        one_row = stack.work / "bodies" / "one-row.json"
        gateway = Target("gateway", f"{stack.gateway_url}/predict", one_row)
        say(f"hot swap to version {new_version} under load ({interval:g} s alias poll interval)")
        with timed("hot_swap", phases):
            swap, swap_error = attempt(
                "hot swap",
                lambda: hot_swap_under_load(stack, gateway, new_version, interval, CONNECTIONS),
            )
    say("retrain through the gateway, timed by stage")
    with timed("retrain", phases):
        retrain, retrain_error = attempt("retrain", lambda: retrain_breakdown(stack))
    say("predictor cold start")
    with timed("cold_start", phases):
        cold, cold_error = attempt("cold start", lambda: predictor_cold_start(stack))
    record = {
        "hot_swap": swap.as_dict() if swap is not None else {"error": swap_error},
        "hot_swap_training_s": trained[1] if trained is not None else None,
        "retrain": retrain or {"error": retrain_error},
        "predictor_cold_start": cold or {"seconds": None, "error": cold_error},
    }
    return AfterLoad(swap, swap_error, record)


def results_record(comparison: Comparison, after: AfterLoad) -> dict[str, Any]:
    """The measured part of results.json: goals first, then every figure behind them."""
    compared, later = comparison.record, after.record
    goals = evaluate_goals(
        comparison.summaries, after.swap, after.swap_error, comparison.constant_error
    )
    return {
        "goals": [goal.as_dict() for goal in goals],
        "model_version": compared["model_version"],
        "ratios": compared["ratios"],
        "load": compared["load"],
        "hot_swap": later["hot_swap"],
        "reports": {
            "cold_start": {"predictor": later["predictor_cold_start"], **compared["cold_start"]},
            "memory": compared["memory"],
            "retrain": later["retrain"],
            "hot_swap_training_s": later["hot_swap_training_s"],
        },
        "servers": compared["servers"],
    }


def main() -> int:
    settings = BenchSettings.from_env()
    wrk = wrk_version()  # fails at once when wrk is missing
    started = time.monotonic()
    phases: dict[str, float] = {}
    results: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "git": git_commit(),
        "load_average": {"before": load_average()},
    }
    work = Path(tempfile.mkdtemp(prefix="iris-bench-"))
    say(f"state and logs in {work}")
    stack = BenchStack.prepare(work)
    finished = False
    try:
        say("starting the bench stack (scripts/stack.py up; trains the baseline)")
        with timed("stack_up", phases):
            stack.start_redis()
            stack.up()
        comparison = compare_servers(stack, settings, phases)
        after = swap_and_retrain(stack, phases)
        finished = True
    finally:
        say("stopping the bench stack")
        with timed("stack_down", phases):
            stack.down()
        if finished and not os.environ.get("BENCH_KEEP_STATE"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work} (logs in {work / 'logs'} and {work / 'state' / 'logs'})")

    results.update(results_record(comparison, after))
    results["load_average"]["after"] = load_average()
    results.update(
        elapsed_s=round(time.monotonic() - started, 1),
        phase_seconds=phases,
        machine=machine(),
        versions=library_versions(),
        wrk=wrk,
    )
    write_results(results, RESULTS_JSON, RESULTS_MD)
    readme = "README updated" if update_readme(README, results) else "README has no bench markers"
    say(f"wrote {RESULTS_JSON.relative_to(ROOT)} and {RESULTS_MD.relative_to(ROOT)}; {readme}")
    print(RESULTS_MD.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
