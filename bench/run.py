"""`make bench`: the serving path against `mlflow models serve`, MLServer and BentoML, side by
side, on a second local stack (iris_devstack.private_stack), in the order of `main`: the other
servers started, wrk rounds alternating every server and protocol, memory right after them, a
hot swap under load, a retrain timed stage by stage, the predictor's cold start; then the
goals (bench/goals.py), bench/results.{json,md} and the README's table.

The run exits non-zero only when it cannot measure (the stack, mlflow or a required load
fails); a missed goal is reported, not an error.

Settings: BENCH_ROUNDS (3), BENCH_SECONDS (8 per round), BENCH_WARMUP_SECONDS (3),
BENCH_PROBE_SECONDS (2); BENCH_NOTE, a note on the machine for the report.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any, TypeVar

from bench import loads, servers
from bench.common import (
    ROOT,
    SERVICES,
    Session,
    attempt,
    command_line,
    poll_interval_s,
    say,
    setting,
    timed,
)
from bench.goals import evaluate_all
from bench.measurements import recording_counts, tree_memory
from bench.phases import (
    hot_swap_under_load,
    predictor_cold_start,
    retrain_breakdown,
    train_next_version,
)
from bench.report import update_readme, write
from iris_devstack.private_stack import PrivateStack

T = TypeVar("T")
PEERS = {"mlserver": "MLServer", "bentoml": "BentoML"}
# The other servers: their name in the report, and what their cold start is timed to.
FIRST_ANSWER = "process start → first 200 to a one-row prediction request"
SERVERS = {
    "mlflow": ("mlflow models serve -w 2", "process start → first 200 to a one-row POST "
               "/invocations (the CLI downloads the model first)"),
    **{name: (label, FIRST_ANSWER) for name, label in PEERS.items()},
    "constant": ("constant endpoint", "process start → GET /readyz 200"),
}  # fmt: skip


def start_servers(
    stack: PrivateStack, version: str, running: ExitStack, phases: dict[str, float]
) -> tuple[dict[str, servers.Server], dict[str, str]]:
    """mlflow models serve (required), the constant endpoint and the peers (each reported as
    not run, with why, when it fails); each stopped when `running` closes."""
    say(f"starting mlflow models serve -w 2 on version {version}, and the constant endpoint")
    started: dict[str, servers.Server] = {}
    errors: dict[str, str] = {}

    def start(name: str, step: Callable[[], servers.Server]) -> None:
        server, error = attempt(name, step)
        if server is None:
            errors[name] = str(error).splitlines()[0][:300]
        else:
            started[name] = running.enter_context(server)

    with timed("start_baselines", phases):
        started["mlflow"] = running.enter_context(servers.start_mlflow_serve(stack, version))
        start("constant", partial(servers.start_constant_server, stack))
    with timed("start_peers", phases):
        export = partial(servers.export_joblib, version, stack.work)
        model, error = attempt("exporting the model", export)
        for name in PEERS:
            if model is None:
                errors[name] = f"model export failed: {error}"
            else:
                say(f"starting {name}")
                start(name, partial(servers.start_peer, name, model, stack.work, stack.logs))
    return started, errors


def compare_servers(stack: PrivateStack, phases: dict[str, float]) -> dict[str, Any]:
    """The other servers, the alternating load rounds, and memory right after them."""
    settings = {"rounds": setting("BENCH_ROUNDS", 3), "round_seconds": setting("BENCH_SECONDS", 8)}
    settings["warmup_seconds"] = setting("BENCH_WARMUP_SECONDS", 3)
    settings["probe_seconds"] = setting("BENCH_PROBE_SECONDS", 2)
    version = stack.production_version()
    with ExitStack() as running:
        started, errors = start_servers(stack, version, running, phases)
        bodies = loads.bench_bodies(stack.work / "bodies")
        with timed("probe_mlflow_shapes", phases):
            mlflow = started["mlflow"].url
            shapes = loads.probe_mlflow_shapes(mlflow, bodies, settings["probe_seconds"])
            # Peers that did not start are not measured, with why.
            down = [name for name in PEERS if name in errors]
            missing = {f"{name}{end}": errors[name] for name in down for end in ("", "-batch")}
            urls = {name: server.url for name, server in started.items()}
            urls |= {"predictor": stack.predictor_url, "gateway": stack.gateway_url}
            measured = loads.bench_loads(urls, bodies, shapes, missing)
        count, seconds = settings["rounds"], settings["round_seconds"]
        say(f"load: {count} rounds of {seconds} s per server, {len(measured)} servers alternated")
        with timed("load_rounds", phases):
            rounds = loads.run_rounds(measured, count, seconds, settings["warmup_seconds"])
        memory = {label: tree_memory(stack.pid(program)) for label, program in SERVICES.items()}
        for name in ("mlflow", *PEERS):
            server = started.get(name)
            memory[SERVERS[name][0]] = tree_memory(server.process.pid if server else None)
        recording = recording_counts(stack)
    medians = {name: loads.medians(rounds_of) for name, rounds_of in rounds.items()}
    constant = started.get("constant")
    peers: dict[str, dict[str, Any]] = {}
    for name, label in PEERS.items():
        peer = started.get(name)
        peers[label] = {"error": errors.get(name)} if peer is None else {"command": peer.command}
        peers[label] |= {"versions": peer.versions, "settings": peer.settings} if peer else {}
    constants: dict[str, Any] = {"connections": loads.CONNECTIONS, "batch_rows": loads.BATCH_ROWS}
    constants |= {"batch_connections": loads.BATCH_CONNECTIONS, "wrk_threads": loads.WRK_THREADS}
    constants |= {"wrk_timeout": loads.WRK_TIMEOUT}
    return {
        # The named figures the goals read: each load's medians and each process tree's memory.
        "figures": medians | {f"memory:{name}": tree for name, tree in memory.items() if tree},
        "missing": missing | {name: errors[name] for name in ("constant",) if name in errors},
        "model_version": version,
        "load": settings
        | constants
        | {"mlflow_shape": shapes, "not_measured": missing}
        | {
            "servers": {
                each.name: {"url": each.url, "request": each.request, "median": medians[each.name]}
                | {"rounds": rounds[each.name], "connections": each.connections}
                | {"rows_per_request": each.body.rows}
                for each in measured
            }
        },
        "cold_start": {
            label: {"seconds": round(started[name].startup_s, 2), "how": how}
            if name in started
            else {"seconds": None, "error": errors.get(name)}
            for name, (label, how) in SERVERS.items()
            if name in started or name != "constant"
        },
        "memory": memory,
        "recording": recording,
        "servers": {
            "predictor_workers": constant.workers if constant else None,
            "constant_command": constant.command if constant else None,
            "constant_error": errors.get("constant"),
            "mlflow_serve_command": started["mlflow"].command,
            "peers": peers,
        },
    }


def main() -> int:
    wrk = loads.wrk_version()  # fails at once when wrk is missing
    with Session("bench", command_line("bench")) as session:
        stack, phases = session.stack, session.phases

        def step(phase: str, what: str, run: Callable[[], T]) -> tuple[T | None, str | None]:
            say(what)
            with timed(phase, phases):
                return attempt(phase, run)

        session.up()
        interval = poll_interval_s(stack)
        compared = compare_servers(stack, phases)
        what = "training the next version with the CLI for the hot swap"
        trained, swap_error = step("train_next_version", what, partial(train_next_version, stack))
        swap, new_version = None, "the next" if trained is None else trained[0]
        if trained is not None:
            what = f"hot swap to version {new_version} under load ({interval:g} s poll interval)"
            run = partial(hot_swap_under_load, stack, new_version, interval)
            swap, swap_error = step("hot_swap", what, run)
        what = "retrain through the gateway, timed by stage"
        retrain, retrain_error = step("retrain", what, partial(retrain_breakdown, stack))
        cold_start = partial(predictor_cold_start, stack)
        cold, cold_error = step("cold_start", "predictor cold start", cold_start)
        session.finished = True
    figures, missing = compared.pop("figures"), compared.pop("missing")
    if swap is not None:
        figures["swap"] = swap["load"] | {"all_new_answers_s": swap["all_new_answers_s"]}
    missing |= {"swap": swap_error} if swap_error else {}
    reports: dict[str, Any] = {
        "cold_start": {"predictor": cold or {"seconds": None, "error": cold_error}}
        | compared.pop("cold_start"),
        "memory": compared.pop("memory"),
        "recording": compared.pop("recording"),
        "retrain": retrain or {"error": retrain_error},
        "hot_swap_training_s": trained[1] if trained is not None else None,
    }
    results = session.results | {"goals": evaluate_all(figures, missing, interval, new_version)}
    results |= compared | {"hot_swap": swap or {"error": swap_error}, "reports": reports}
    results |= session.closing() | {"phase_seconds": phases, "wrk": wrk}
    write(results, ROOT / "bench" / "results.json", "bench.md")
    updated = update_readme(ROOT / "README.md", results)
    say("README updated" if updated else "README has no bench markers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
