"""`make bench`: the serving path against `mlflow models serve`, MLServer and BentoML, side by
side, in one run.

In order:
  1. a private Redis and a second local stack (iris_devstack.private_stack: free ports, its own
     state folder and API token, the predictor in a venv of its own dependencies), which
     trains the baseline: version 1, alias `production`;
  2. `mlflow models serve -w 2` on that same version, a constant-answer endpoint launched
     with the predictor's own command line, and the peers (bench/peers.py): MLServer and
     BentoML, each in a virtual environment of its own, on the same version exported with joblib;
  3. wrk rounds that alternate every server and protocol (bench/loads.py: one row at 32
     connections, 1,000-row batches at 4), so drift on a shared machine hits all alike; medians
     and ratios per server; a predictor protocol this build does not serve is reported as not
     measured;
  4. memory of every service's process tree, right after the load;
  5. a hot swap under load: version 2 trained with the CLI, `production` moved to it while wrk
     drives the gateway;
  6. a retrain through the gateway, timed stage by stage; the predictor's cold start;
  7. the goals (bench/goals.py), bench/results.json, bench/results.md and the README's goals
     table.

The run exits non-zero only when it cannot measure (the stack, mlflow or a required load
fails); a missed goal is reported, not an error.

Settings: BENCH_ROUNDS (3), BENCH_SECONDS (8 per round), BENCH_WARMUP_SECONDS (3),
BENCH_PROBE_SECONDS (2); BENCH_NOTE, a note on the machine for the report. Run from the
repository root: `python -m bench.run`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import loads
from bench.baselines import RunningServer, start_constant_server, start_mlflow_serve
from bench.config import (
    BATCH_CONNECTIONS,
    BATCH_ROWS,
    CONNECTIONS,
    README,
    RESULTS_JSON,
    ROOT,
    WRK_THREADS,
    WRK_TIMEOUT,
    BenchSettings,
    command_line,
)
from bench.console import attempt, say, timed
from bench.goals import bench_goals, evaluate_all, figures
from bench.measurements import SERVICES, predictor_cold_start, recording_counts, tree_memory
from bench.peers import start_peers
from bench.phases import SwapOutcome, hot_swap_under_load, poll_interval_s, retrain_breakdown
from bench.report import bench_markdown, update_readme, write
from bench.session import Session
from iris_devstack.private_stack import PrivateStack

# The servers the predictor is compared with: their name in the report, and what their cold
# start is timed to.
FIRST_ANSWER = "process start → first 200 to a one-row prediction request"
SERVERS = {
    "mlflow": ("mlflow models serve -w 2", "process start → first 200 to a one-row POST "
               "/invocations (the CLI downloads the model first)"),
    "mlserver": ("MLServer", FIRST_ANSWER),
    "bentoml": ("BentoML", FIRST_ANSWER),
    "constant": ("constant endpoint", "process start → GET /readyz 200"),
}  # fmt: skip
PEERS = ("mlserver", "bentoml")


def train_next_version(stack: PrivateStack) -> tuple[str, float]:
    """Register a new version with the CLI (as `make train` does); its number and seconds."""
    started = time.monotonic()
    with (stack.logs / "train-v2.log").open("ab") as out:
        command = [str(Path(sys.executable).parent / "iris-mlops"), "train"]
        subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    return stack.latest_version(), round(time.monotonic() - started, 2)


# results.json's ratios: ours over theirs in one field.
RATIOS = {
    "predictor_over_mlflow_requests_per_s": ("predictor", "mlflow", "requests_per_s"),
    "predictor_over_mlflow_p99": ("predictor", "mlflow", "p99_ms"),
    "gateway_over_mlflow_requests_per_s": ("gateway", "mlflow", "requests_per_s"),
    "gateway_over_predictor_requests_per_s": ("gateway", "predictor", "requests_per_s"),
    "batch_predictor_over_mlflow_rows_per_s": ("predictor-batch", "mlflow-batch", "rows_per_s"),
    "predictor_over_constant_requests_per_s": ("predictor", "constant", "requests_per_s"),
}


def ratios(summaries: dict[str, loads.Summary]) -> dict[str, float | None]:
    def ratio(ours: str, theirs: str, field: str) -> float | None:
        a, b = summaries.get(ours), summaries.get(theirs)
        if a is None or b is None or not getattr(b, field):
            return None
        return round(float(getattr(a, field)) / float(getattr(b, field)), 3)

    return {key: ratio(*pair) for key, pair in RATIOS.items()}


def probe_mlflow_shapes(
    url: str, bodies: dict[str, loads.Body], settings: BenchSettings
) -> dict[str, str]:
    """The JSON shape `mlflow models serve` answers fastest, for one row and for batches."""
    shapes = {}
    for kind, size, connections in (
        ("one_row", "one", CONNECTIONS),
        ("batch", "batch", BATCH_CONNECTIONS),
    ):
        candidates = {
            shape: loads.Target(f"mlflow-{kind}-{shape}", url, bodies[f"mlflow-{size}-{shape}"])
            for shape in loads.MLFLOW_FORMATS
        }
        shapes[kind] = loads.pick_mlflow_shape(candidates, connections, settings.probe_seconds)
        say(f"mlflow models serve: {kind} as {shapes[kind]}")
    return shapes


def compare_servers(
    stack: PrivateStack, settings: BenchSettings, phases: dict[str, float]
) -> dict[str, Any]:
    """The baselines and peers, the alternating load rounds, and memory right after the load;
    the record for results.json, with `summaries` and `missing` for the goals."""
    version = stack.production_version()
    servers: dict[str, RunningServer] = {}
    errors: dict[str, str] = {}
    say(f"starting mlflow models serve -w 2 on version {version}, and the constant endpoint")
    with ExitStack() as running:
        with timed("start_baselines", phases):
            servers["mlflow"] = start_mlflow_serve(stack, version)
            running.callback(servers["mlflow"].process.stop)
            constant, error = attempt("constant server", lambda: start_constant_server(stack))
        with timed("start_peers", phases):
            peers, errors = start_peers(version, stack.work, stack.logs)
        servers |= {name: peer.server for name, peer in peers.items()}
        if constant is not None:
            servers["constant"] = constant
        for server in servers.values():
            if server is not servers["mlflow"]:
                running.callback(server.process.stop)
        bodies = stack.work / "bodies"
        bodies.mkdir(exist_ok=True)
        written = loads.bench_bodies(bodies)
        with timed("probe_mlflow_shapes", phases):
            shapes = probe_mlflow_shapes(f"{servers['mlflow'].url}/invocations", written, settings)
            # Peers that did not start are not measured, with why.
            missing = {
                f"{name}{end}": why for name, why in errors.items() for end in ("", "-batch")
            }
            urls = {name: server.url for name, server in servers.items()}
            urls |= {"predictor": stack.predictor_url, "gateway": stack.gateway_url}
            load_list = loads.bench_loads(urls, written, shapes, missing)
        per_server = f"{settings.rounds} rounds of {settings.round_seconds} s per server"
        say(f"load: {per_server}, {len(load_list)} servers alternated")
        with timed("load_rounds", phases):
            rounds = loads.run_rounds(load_list, settings)
        memory = {label: tree_memory(stack.pid(program)) for label, program in SERVICES.items()}
        for name in ("mlflow", *PEERS):
            memory[SERVERS[name][0]] = tree_memory(
                servers[name].process.pid if name in servers else None
            )
        recording = recording_counts(stack)

    summaries = {name: loads.Summary.of(results) for name, results in rounds.items()}
    table = {
        load.target.name: {
            "url": load.target.url,
            "request": load.request,
            "connections": load.connections,
            "rows_per_request": load.target.rows_per_request,
            "median": summaries[load.target.name].as_dict(),
            "rounds": [result.as_dict() for result in rounds[load.target.name]],
        }
        for load in load_list
    }
    cold_start = {
        label: {"seconds": round(servers[name].startup_s, 2), "how": how}
        if name in servers
        else {"seconds": None, "error": errors.get(name)}
        for name, (label, how) in SERVERS.items()
        if name in servers or name != "constant"
    }
    return {
        "summaries": summaries,
        "missing": missing | ({"constant": error} if error else {}),
        "model_version": version,
        "servers": {
            "predictor_workers": constant.workers if constant is not None else None,
            "constant_command": constant.command if constant is not None else None,
            "constant_error": error,
            "mlflow_serve_command": servers["mlflow"].command,
            "peers": {
                SERVERS[name][0]: {"command": peers[name].server.command}
                | {"versions": peers[name].versions, "settings": peers[name].settings}
                if name in peers
                else {"error": errors.get(name)}
                for name in PEERS
            },
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
            "order": [load.target.name for load in load_list],
            "mlflow_shape": shapes,
            "not_measured": missing,
            "servers": table,
        },
        "ratios": ratios(summaries),
        "cold_start": cold_start,
        "memory": memory,
        "recording": recording,
    }


def swap_and_retrain(
    stack: PrivateStack, interval: float, phases: dict[str, float]
) -> dict[str, Any]:
    """A hot swap under load, a retrain timed by stage, and the predictor's cold start."""
    say("training the next version with the CLI for the hot swap")
    with timed("train_next_version", phases):
        trained, swap_error = attempt("training", lambda: train_next_version(stack))
    swap: SwapOutcome | None = None
    if trained is not None:
        gateway = loads.Target(
            "gateway",
            f"{stack.gateway_url}/predict",
            loads.Body(stack.work / "bodies" / "one.json", 1),
        )
        say(f"hot swap to version {trained[0]} under load ({interval:g} s alias poll interval)")
        with timed("hot_swap", phases):
            swap, swap_error = attempt(
                "hot swap",
                lambda: hot_swap_under_load(stack, gateway, trained[0], interval, CONNECTIONS),
            )
    say("retrain through the gateway, timed by stage")
    with timed("retrain", phases):
        retrain, retrain_error = attempt("retrain", lambda: retrain_breakdown(stack))
    say("predictor cold start")
    with timed("cold_start", phases):
        cold, cold_error = attempt("cold start", lambda: predictor_cold_start(stack))
    return {
        "swap": swap,
        "swap_error": swap_error,
        "new_version": trained[0] if trained is not None else "the next",
        "hot_swap": swap.as_dict() if swap is not None else {"error": swap_error},
        "hot_swap_training_s": trained[1] if trained is not None else None,
        "retrain": retrain or {"error": retrain_error},
        "predictor_cold_start": cold or {"seconds": None, "error": cold_error},
    }


def goals(compared: dict[str, Any], later: dict[str, Any], interval: float) -> list[dict[str, Any]]:
    """The goals' verdicts from this run's figures: every load's medians, memory, the hot swap."""
    named = figures(compared["summaries"], compared["memory"], later["swap"])
    missing = compared["missing"] | ({"swap": later["swap_error"]} if later["swap_error"] else {})
    records = bench_goals(interval, later["new_version"])
    return [goal.as_dict() for goal in evaluate_all(records, named, missing)]


def main() -> int:
    settings = BenchSettings.from_env()
    wrk = loads.wrk_version()  # fails at once when wrk is missing
    phases: dict[str, float] = {}
    with Session("bench", command_line(), phases) as session:
        stack = session.stack
        say("starting the bench stack (python -m iris_devstack up; trains the baseline)")
        with timed("stack_up", phases):
            stack.start_redis()
            stack.up()
        interval = poll_interval_s(stack)
        compared = compare_servers(stack, settings, phases)
        later = swap_and_retrain(stack, interval, phases)
        session.finished = True
    results = session.results | {
        "goals": goals(compared, later, interval),
        "model_version": compared["model_version"],
        "ratios": compared["ratios"],
        "load": compared["load"],
        "hot_swap": later["hot_swap"],
        "reports": {
            "cold_start": {"predictor": later["predictor_cold_start"], **compared["cold_start"]},
            "memory": compared["memory"],
            "recording": compared["recording"],
            "retrain": later["retrain"],
            "hot_swap_training_s": later["hot_swap_training_s"],
        },
        "servers": compared["servers"],
    }
    results |= session.closing() | {"phase_seconds": phases, "wrk": wrk}
    write(results, RESULTS_JSON, bench_markdown)
    say("README updated" if update_readme(README, results) else "README has no bench markers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
