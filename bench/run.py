"""`make bench`: the serving path against `mlflow models serve`, MLServer and BentoML, side by
side, in one run.

In order:
  1. a private Redis and a second local stack (scripts/stack.py up on free ports, its own state
     folder and API token), which trains the baseline: version 1, alias `production`;
  2. `mlflow models serve -w 2` on that same version, a constant-answer endpoint launched
     with the predictor's own command line, and the peers (bench/peers.py): MLServer and
     BentoML, each in a virtual environment of its own, on the same version exported with joblib;
  3. wrk rounds that alternate every server and protocol (one row at 32 connections, 1,000-row
     batches at 4), so drift on a shared machine hits all alike; medians and ratios per server;
     a predictor protocol this build does not serve is reported as not measured;
  4. memory of every service's process tree, right after the load;
  5. a hot swap under load: version 2 trained with the CLI, `production` moved to it while wrk
     drives the gateway;
  6. a retrain through the gateway, timed stage by stage; the predictor's cold start;
  7. bench/results.json, bench/results.md and the README's goals table.

Settings: BENCH_ROUNDS (3), BENCH_SECONDS (8 per round), BENCH_WARMUP_SECONDS (3),
BENCH_PROBE_SECONDS (2); BENCH_NOTE, a note on the machine for the report. Run from the
repository root: `python -m bench.run`.
"""

from __future__ import annotations

import json
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
    MODEL_NAME,
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
from bench.goals import evaluate_goals, evaluate_peer_goals
from bench.local_stack import BenchStack
from bench.machine import git_commit, library_versions, load_average, machine
from bench.memory import tree_memory
from bench.peers import (
    PeerEnvironment,
    PeerServer,
    ensure_environment,
    export_joblib,
    peer_environments,
    start_bentoml,
    start_mlserver,
)
from bench.report import update_readme, write_results
from bench.retrain import retrain_breakdown
from bench.rounds import Load, Summary, pick_mlflow_shape, run_rounds
from bench.swap import SwapOutcome, hot_swap_under_load
from bench.wrk import Target, WrkResult, wrk_version
from iris_predictor.config import PredictorSettings

T = TypeVar("T")


@dataclass
class Servers:
    """What the load rounds drive, the JSON shape mlflow gets for one row and for batches, and
    why a load that a goal needs is not measured."""

    loads: list[Load]
    mlflow_shape: dict[str, str]
    missing: dict[str, str]


@dataclass
class Peers:
    """MLServer and BentoML, each running or with the reason it does not."""

    mlserver: PeerServer | None
    bentoml: PeerServer | None
    errors: dict[str, str]


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
        headers=target.request_headers(),
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{target.name} answered {response.status_code}: {response.text[:300]}")


def answering(loads: list[Load], missing: dict[str, str]) -> list[Load]:
    """The loads whose server answers their request; the others go to `missing` with why (a
    protocol this predictor does not serve yet, a peer that refuses the body)."""
    kept = []
    for load in loads:
        try:
            check_answers(load.target)
        except (RuntimeError, httpx.HTTPError) as exc:
            missing[load.target.name] = str(exc).splitlines()[0][:300]
            say(f"not measured: {missing[load.target.name]}")
            continue
        kept.append(load)
    return kept


def build_servers(
    stack: BenchStack,
    mlflow: RunningServer,
    constant: RunningServer | None,
    peers: Peers,
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

    def mlflow_body(kind: str, shape: str | None = None) -> Path:
        return bodies / f"mlflow-{kind}-{shape or shapes[kind]}.json"

    csv_batch = payloads.write_raw(bodies, "batch.csv", payloads.mlflow_csv(flowers))
    v2_one = payloads.write_body(bodies, "v2-one-row", payloads.v2_json_body([flower]))
    v2_batch = payloads.write_body(bodies, "v2-batch", payloads.v2_json_body(flowers))
    binary_one, binary_one_header = payloads.v2_binary_body([flower])
    binary_batch, binary_batch_header = payloads.v2_binary_body(flowers)
    bento_one = payloads.write_body(bodies, "bentoml-one-row", payloads.bentoml_body([flower]))
    bento_batch = payloads.write_body(bodies, "bentoml-batch", payloads.bentoml_body(flowers))

    def binary(name: str, url: str, body: bytes, header: int, rows: int) -> Target:
        return Target(
            name,
            url,
            payloads.write_raw(bodies, f"{name}.bin", body),
            rows,
            content_type="application/octet-stream",
            headers=(("Inference-Header-Content-Length", str(header)),),
        )

    batch_rows = f"{BATCH_ROWS:,} rows"
    predictor, gateway = stack.predictor_url, stack.gateway_url
    v2_infer = f"{predictor}/v2/models/{MODEL_NAME}/infer"
    one_row_shape, split = shapes["one_row"], "dataframe_split"
    missing: dict[str, str] = {}

    one_row = [
        Load(Target("predictor", f"{predictor}/predict", one), CONNECTIONS, "POST /predict"),
        Load(
            Target("mlflow", invocations, mlflow_body("one_row")),
            CONNECTIONS,
            f"mlflow models serve: POST /invocations ({one_row_shape})",
        ),
    ]
    batches = [
        Load(
            Target("predictor-batch", f"{predictor}/predict/batch", batch, BATCH_ROWS),
            BATCH_CONNECTIONS,
            f"POST /predict/batch, {batch_rows}",
        ),
        Load(
            Target("mlflow-batch", invocations, mlflow_body("batch"), BATCH_ROWS),
            BATCH_CONNECTIONS,
            f"mlflow models serve: POST /invocations ({shapes['batch']}), {batch_rows}",
        ),
    ]
    if shapes["batch"] != split:
        batches.append(
            Load(
                Target("mlflow-batch-split", invocations, mlflow_body("batch", split), BATCH_ROWS),
                BATCH_CONNECTIONS,
                f"mlflow models serve: POST /invocations ({split}), {batch_rows}",
            )
        )
    batches.append(
        Load(
            Target("mlflow-batch-csv", invocations, csv_batch, BATCH_ROWS, content_type="text/csv"),
            BATCH_CONNECTIONS,
            f"mlflow models serve: POST /invocations (text/csv), {batch_rows}",
        )
    )
    if peers.mlserver is not None:
        mlserver_infer = f"{peers.mlserver.server.url}/v2/models/{MODEL_NAME}/infer"
        one_row += answering(
            [
                Load(
                    Target("mlserver", mlserver_infer, v2_one),
                    CONNECTIONS,
                    "MLServer: POST /v2/models/{name}/infer (V2 JSON)",
                )
            ],
            missing,
        )
        batches += answering(
            [
                Load(
                    Target("mlserver-batch", mlserver_infer, v2_batch, BATCH_ROWS),
                    BATCH_CONNECTIONS,
                    f"MLServer: POST /v2/models/{{name}}/infer (V2 JSON), {batch_rows}",
                ),
                # Measured if MLServer takes the binary extension; 1.7.1's REST server does not.
                Load(
                    binary(
                        "mlserver-binary-batch",
                        mlserver_infer,
                        binary_batch,
                        binary_batch_header,
                        BATCH_ROWS,
                    ),
                    BATCH_CONNECTIONS,
                    f"MLServer: POST /v2/models/{{name}}/infer (binary tensors), {batch_rows}",
                ),
            ],
            missing,
        )
    if peers.bentoml is not None:
        classify = f"{peers.bentoml.server.url}/classify"
        one_row += answering(
            [Load(Target("bentoml", classify, bento_one), CONNECTIONS, "BentoML: POST /classify")],
            missing,
        )
        batches += answering(
            [
                Load(
                    Target("bentoml-batch", classify, bento_batch, BATCH_ROWS),
                    BATCH_CONNECTIONS,
                    f"BentoML: POST /classify, {batch_rows}",
                )
            ],
            missing,
        )
    for name, error in peers.errors.items():
        for suffix in ("", "-batch"):
            missing[f"{name}{suffix}"] = error
    one_row.append(
        Load(Target("gateway", f"{gateway}/predict", one), CONNECTIONS, "POST /predict (gateway)")
    )
    if constant is not None:
        one_row.append(
            Load(
                Target("constant", f"{constant.url}/predict", one),
                CONNECTIONS,
                "POST /predict (constant answer)",
            )
        )
    # The predictor's other protocols (issue 16): measured where this build serves them.
    one_row += answering(
        [
            Load(Target("predictor-v2", v2_infer, v2_one), CONNECTIONS, "POST /v2/.../infer"),
            Load(
                binary("predictor-v2-binary", v2_infer, binary_one, binary_one_header, 1),
                CONNECTIONS,
                "POST /v2/.../infer (binary tensors)",
            ),
            Load(
                Target("predictor-invocations", f"{predictor}/invocations", mlflow_body("one_row")),
                CONNECTIONS,
                f"POST /invocations ({one_row_shape})",
            ),
        ],
        missing,
    )
    batches += answering(
        [
            Load(
                Target("predictor-v2-batch", v2_infer, v2_batch, BATCH_ROWS),
                BATCH_CONNECTIONS,
                f"POST /v2/.../infer (V2 JSON), {batch_rows}",
            ),
            Load(
                binary(
                    "predictor-v2-binary-batch",
                    v2_infer,
                    binary_batch,
                    binary_batch_header,
                    BATCH_ROWS,
                ),
                BATCH_CONNECTIONS,
                f"POST /v2/.../infer (binary tensors), {batch_rows}",
            ),
            Load(
                Target(
                    "predictor-invocations-batch",
                    f"{predictor}/invocations",
                    mlflow_body("batch", split),
                    BATCH_ROWS,
                ),
                BATCH_CONNECTIONS,
                f"POST /invocations ({split}), {batch_rows}",
            ),
            Load(
                Target(
                    "predictor-invocations-csv-batch",
                    f"{predictor}/invocations",
                    csv_batch,
                    BATCH_ROWS,
                    content_type="text/csv",
                ),
                BATCH_CONNECTIONS,
                f"POST /invocations (text/csv), {batch_rows}",
            ),
        ],
        missing,
    )
    loads = one_row + batches
    for load in loads:
        check_answers(load.target)
    return Servers(loads=loads, mlflow_shape=shapes, missing=missing)


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


def memory_by_service(stack: BenchStack, mlflow: RunningServer, peers: Peers) -> dict[str, Any]:
    programs = {
        "predictor": "predictor",
        "gateway": "gateway",
        "trainer worker": "trainer",
        "MLflow server": "mlflow",
    }
    memory = {name: tree_memory(stack.pid(program)) for name, program in programs.items()}
    memory["mlflow models serve -w 2"] = tree_memory(mlflow.process.pid)
    memory["MLServer"] = tree_memory(peers.mlserver.server.process.pid if peers.mlserver else None)
    memory["BentoML"] = tree_memory(peers.bentoml.server.process.pid if peers.bentoml else None)
    return memory


# What the predictor says of its own recording (iris_predictor.recorder, .feedback).
RECORDING_SERIES = (
    "iris_prediction_log_waits_total",
    "iris_prediction_log_dropped_total",
    "iris_prediction_store_dropped_total",
)


def recording_counts(stack: BenchStack) -> dict[str, float] | None:
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


def start_peers(stack: BenchStack, version: str, bodies: Path) -> Peers:
    """MLServer and BentoML on `version`, each in its own environment; one that cannot be set
    up or started is recorded, and the goals that need it are reported not measured."""
    errors: dict[str, str] = {}
    environments = peer_environments()
    model, error = attempt(
        "exporting the model", lambda: export_joblib(version, stack.work / "peer-model")
    )
    started: dict[str, PeerServer | None] = {}
    one_row = [payloads.FLOWER]
    first_bodies = {
        "mlserver": (json.dumps(payloads.v2_json_body(one_row)).encode(), "application/json"),
        "bentoml": (json.dumps(payloads.bentoml_body(one_row)).encode(), "application/json"),
    }
    starters = {"mlserver": start_mlserver, "bentoml": start_bentoml}
    for name, environment in environments.items():
        if model is None:
            errors[name] = f"model export failed: {error}"
            started[name] = None
            continue
        say(f"starting {name} ({' '.join(environment.requirements)})")

        def start(
            name: str = name, environment: PeerEnvironment = environment, model: Path = model
        ) -> PeerServer:
            ensure_environment(environment)
            return starters[name](environment, model, stack.work, stack.logs, first_bodies[name])

        started[name], failure = attempt(name, start)
        if failure is not None:
            errors[name] = failure.splitlines()[0][:300]
    return Peers(started["mlserver"], started["bentoml"], errors)


def compare_servers(
    stack: BenchStack, settings: BenchSettings, phases: dict[str, float]
) -> Comparison:
    """The baselines, the alternating load rounds, and memory right after the load."""
    version = stack.production_version()
    say(f"starting mlflow models serve -w 2 on version {version}, and the constant endpoint")
    with timed("start_baselines", phases):
        mlflow = start_mlflow_serve(stack, version)
        constant, constant_error = attempt("constant server", lambda: start_constant_server(stack))
    bodies = stack.work / "bodies"
    bodies.mkdir(exist_ok=True)
    with timed("start_peers", phases):
        peers = start_peers(stack, version, bodies)
    try:
        with timed("probe_mlflow_shapes", phases):
            servers = build_servers(stack, mlflow, constant, peers, bodies, settings)
        say(
            f"load: {settings.rounds} rounds of {settings.round_seconds} s per server, "
            f"{len(servers.loads)} servers alternated"
        )
        with timed("load_rounds", phases):
            summaries, table = summarize(servers, run_rounds(servers.loads, settings))
        memory = memory_by_service(stack, mlflow, peers)
        recording = recording_counts(stack)
    finally:
        mlflow.process.stop()
        if constant is not None:
            constant.process.stop()
        for peer in (peers.mlserver, peers.bentoml):
            if peer is not None:
                peer.server.process.stop()

    cold_start = {
        "mlflow models serve -w 2": startup(
            mlflow,
            "process start → first 200 to a one-row POST /invocations "
            "(the CLI downloads the model first)",
        )
    }
    first_answer = "process start → first 200 to a one-row prediction request"
    for label, peer in (("MLServer", peers.mlserver), ("BentoML", peers.bentoml)):
        if peer is not None:
            cold_start[label] = startup(peer.server, first_answer)
        else:
            cold_start[label] = {"seconds": None, "error": peers.errors.get(label.lower())}
    if constant is not None:
        cold_start["constant endpoint"] = startup(constant, "process start → GET /readyz 200")
    record = {
        "model_version": version,
        "servers": {
            "predictor_workers": constant.workers if constant is not None else None,
            "constant_command": constant.command if constant is not None else None,
            "constant_error": constant_error,
            "mlflow_serve_command": mlflow.command,
            "peers": {
                label: {
                    "command": peer.server.command,
                    "versions": peer.versions,
                    "settings": peer.settings,
                }
                if peer is not None
                else {"error": peers.errors.get(label.lower())}
                for label, peer in (("MLServer", peers.mlserver), ("BentoML", peers.bentoml))
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
            "order": [load.target.name for load in servers.loads],
            "mlflow_shape": servers.mlflow_shape,
            "not_measured": servers.missing,
            "servers": table,
        },
        "ratios": ratios(summaries),
        "cold_start": cold_start,
        "memory": memory,
        "recording": recording,
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
    goals += evaluate_peer_goals(
        comparison.summaries, compared["memory"], compared["load"]["not_measured"]
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
            "recording": compared["recording"],
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
        # Whatever the person running it knows about the machine meanwhile (other jobs, ...).
        "note": os.environ.get("BENCH_NOTE", ""),
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
