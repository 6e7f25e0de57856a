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

import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import httpx

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
    tree_memory,
)
from bench.goals import evaluate_all
from bench.report import update_readme, write
from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import REPO_ROOT, answers_post, http_ok, tls_context, wait_until
from iris_shared.jobs import TrainingStage

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
# What the predictor says of its own recording (iris_predictor.recorder, .feedback).
RECORDING_SERIES = (
    "iris_prediction_log_waits_total",
    "iris_prediction_log_dropped_total",
    "iris_prediction_store_dropped_total",
)
MOVE_AFTER_S, CONSECUTIVE_NEW_ANSWERS = 3.0, 10
RETRAIN_POLL_EVERY_S, RETRAIN_TIMEOUT_S = 0.1, 900.0


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


def recording_counts(stack: PrivateStack) -> dict[str, float] | None:
    """The predictor's recording counters after the load rounds (summed over label values):
    requests that waited for the log, log records dropped, kept answers forgotten early."""
    try:
        text = httpx.get(f"{stack.predictor_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    counts = dict.fromkeys(RECORDING_SERIES, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in counts:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts


def served_version(url: str) -> str | None:
    try:
        # A new connection per poll (no shared client), so polls reach every worker process.
        response = httpx.get(url, timeout=2, verify=tls_context())
        return str(response.json()["version"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def hot_swap_under_load(stack: PrivateStack, to_version: str, interval: float) -> dict[str, Any]:
    """wrk drives the gateway while `production` moves to `to_version`; the predictor's
    GET /model is polled until CONSECUTIVE_NEW_ANSWERS answers in a row name it: each worker
    process swaps on its own, and polls on fresh connections land on whichever accepts."""
    one = loads.Body(stack.work / "bodies" / "one.json")
    gateway = loads.Load("gateway", f"{stack.gateway_url}/predict", one)
    from_version = stack.production_version()
    first_new = streak_start = None
    streak = polls = failed_polls = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(loads.run_wrk, gateway, MOVE_AFTER_S + 2 * interval + 4)
        time.sleep(MOVE_AFTER_S)
        stack.move_production_alias(to_version)
        moved = time.monotonic()
        say(f"moved production {from_version} -> {to_version} under load")
        while time.monotonic() - moved < 3 * interval + 5 and streak < CONSECUTIVE_NEW_ANSWERS:
            version = served_version(f"{stack.predictor_url}/model")
            # Timed on the answer, not the question: the conservative end of the interval.
            answered = round(time.monotonic() - moved, 3)
            polls, failed_polls = polls + 1, failed_polls + (version is None)
            if version == to_version:
                first_new = answered if first_new is None else first_new
                streak_start = answered if streak == 0 else streak_start
                streak += 1
            else:
                streak = 0
            time.sleep(0.05)
        result = load.result()
    return {
        "from_version": from_version,
        "to_version": to_version,
        "load": result,
        "predictor_poll_interval_s": interval,
        "first_new_answer_s": first_new,
        "all_new_answers_s": streak_start if streak >= CONSECUTIVE_NEW_ANSWERS else None,
        **{"polls": polls, "failed_polls": failed_polls, "failed_requests": result["failed"]},
        "alias_moved_after_load_start_s": MOVE_AFTER_S,
        "consecutive_answers_required": CONSECUTIVE_NEW_ANSWERS,
    }


def retrain_breakdown(stack: PrivateStack) -> dict[str, Any]:
    """Where a retrain's seconds go: a job submitted through the gateway, its progress polled.
    Polling sees each stage (iris_shared.jobs.TrainingStage) it catches; a stage shorter than
    the interval is missed and its time falls to the one before. When the job's result carries
    its own `stage_seconds`, those exact figures are reported beside."""
    headers = {"Authorization": f"Bearer {stack.token}"}
    phases: list[tuple[float, tuple[str, str | None]]] = []
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=10) as client:
        submitted = time.monotonic()
        job_id = client.post("/retrain").raise_for_status().json()["job_id"]
        job: dict[str, Any] = {}
        while time.monotonic() - submitted < RETRAIN_TIMEOUT_S:
            job = client.get(f"/jobs/{job_id}").json()
            progress, status = job.get("progress") or {}, str(job.get("status"))
            phase = (status, None)
            if status == "running" and progress.get("stage"):
                phase = (str(progress["stage"]), progress.get("model_name"))
            if not phases or phases[-1][1] != phase:
                phases.append((time.monotonic() - submitted, phase))
            if status in ("succeeded", "failed"):
                break
            time.sleep(RETRAIN_POLL_EVERY_S)
    durations = [(name, model, round(b - a, 3)) for (a, (name, model)), (b, _) in pairwise(phases)]
    polled: dict[str, float] = defaultdict(float)
    for name, _, seconds in durations:
        polled[name] += seconds
    steps = [{"phase": name, "model": model, "seconds": s} for name, model, s in durations]
    return {
        "job_id": job_id,
        "status": job.get("status"),
        "job_error": job.get("error"),
        "total_s": round(phases[-1][0], 2) if phases else None,
        "queued_s": round(polled["queued"], 3),
        # Running with no stage reported: before the first stage, or between attempts.
        "no_stage_s": round(polled["running"], 3),
        "reported_stage_seconds": (job.get("result") or {}).get("stage_seconds") or None,
        "polled_stage_seconds": {s.value: round(polled[s.value], 3) for s in TrainingStage},
        "poll_interval_s": RETRAIN_POLL_EVERY_S,
        "steps": steps,
        "job": job,
    }


def predictor_cold_start(stack: PrivateStack) -> dict[str, Any]:
    """From starting the predictor's processes (replicas: `predictor:*`) to its first 200 to a
    one-row `POST /predict`, timed as the peers' are, and when /readyz said it was ready."""
    stack.supervisorctl("stop", "predictor:*")
    url = stack.predictor_url
    predict = answers_post(f"{url}/predict", json.dumps(loads.FLOWER).encode(), loads.JSON)
    # `supervisorctl start` returns only after the program's startsecs: timed from the start
    # request instead, polling meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        start = pool.submit(stack.supervisorctl, "start", "predictor:*")
        try:
            ready_s = wait_until(http_ok(f"{url}/readyz"), timeout=180)
            answer_s = wait_until(predict, timeout=60, interval=0.02)
            seconds = time.monotonic() - started
        except TimeoutError:
            return {"seconds": None, "error": "no 200 to POST /predict within 240 s"}
        finally:
            start.result()
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    return {
        "seconds": round(seconds, 2),
        "ready_s": round(ready_s, 2),
        "after_ready_s": round(answer_s, 2),
        "model_version": ready.get("model_version"),
        "source": ready.get("source"),
        "how": "supervisorctl start predictor:* → first 200 to a one-row POST /predict",
    }


def train_next_version(stack: PrivateStack) -> tuple[str, float]:
    """Register a new version with the CLI (as `make train` does), from the checkout the stack
    trained its baseline from; its number and seconds."""
    started = time.monotonic()
    with (stack.logs / "train-v2.log").open("ab") as out:
        command = [str(Path(sys.executable).parent / "iris-mlops"), "train"]
        subprocess.run(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    return stack.latest_version(), round(time.monotonic() - started, 2)


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
