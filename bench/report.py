"""The one report writer of `make bench`, `make soak` and `make profile`: each writes its
results as JSON (every figure) and Markdown (tables), with the same provenance line; `make
bench` also writes its goals table between the bench markers of the README."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.config import ROOT
from bench.console import say

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table; numbers with thousands separators, None as `-`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def columns(spec: dict[str, str], records: Sequence[dict[str, Any]]) -> list[str]:
    """A Markdown table with one row per record: `spec` maps each header to a record's key."""
    return table(list(spec), [[record.get(key) for key in spec.values()] for record in records])


def provenance(results: dict[str, Any]) -> str:
    git, host = results["git"], results["machine"]
    commit = git["commit"][:10] + (" with uncommitted changes" if git["dirty"] else "")
    return (
        f"Measured {results['timestamp']} on commit {commit}, {host['cores']} cores "
        f"({host['cpu']}), by `{results['command']}` in {results['elapsed_s'] / 60:.1f} min."
    )


def verdicts(results: dict[str, Any], key: str = "goals") -> list[str]:
    """The goals (or the soak's checks) as a table, how many were met, and the provenance."""
    records = results[key]
    with_ratio = any("ratio" in record for record in records)
    rows = [
        [
            record.get("goal") or record.get("check"),
            record["target"],
            record["measured"],
            *([_ratio(record["ratio"])] if with_ratio else []),
            "✅" if record["met"] else "❌",
        ]
        for record in records
    ]
    header = [key[:-1].capitalize(), "Target", "Measured", *(["Ratio"] * with_ratio), "Met"]
    met = sum(1 for record in records if record["met"])
    return [*table(header, rows), "", f"{met} of {len(records)} {key} met. {provenance(results)}"]


def _ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}x"


def percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def machine_lines(results: dict[str, Any]) -> list[str]:
    host, load = results["machine"], results["load_average"]
    return [
        f"- CPU: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB",
        f"- OS: {host['os']}, kernel {host['kernel']}, Python {host['python']}",
        f"- Load average (1, 5, 15 min) before: {load['before']}, after: {load['after']}",
        *([f"- Note on this run: {results['note']}"] if results.get("note") else []),
    ]


def versions_line(results: dict[str, Any]) -> str:
    return "- Libraries: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())


def write(
    results: dict[str, Any], json_path: Path, markdown: Callable[[dict[str, Any]], str]
) -> Path:
    """Write the results JSON and its Markdown beside it (same name, `.md`); print the latter."""
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown(results))
    print(md_path.read_text())
    shown = [
        str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in (json_path, md_path)
    ]
    say(f"wrote {shown[0]} and {shown[1]}")
    return md_path


def update_readme(readme: Path, results: dict[str, Any]) -> bool:
    """Replace the table between the bench markers; False when the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    block = "\n".join([README_START, *verdicts(results), README_END])
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


# --- make bench -------------------------------------------------------------------------------


def load_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in results["load"]["servers"].items():
        m = entry["median"]
        rounds = ", ".join(f"{r['requests_per_s']:,.0f}" for r in entry["rounds"])
        latencies = [
            f"{m['p50_ms']:.2f}",
            f"{m['p90_ms']:.2f}",
            f"{m['p99_ms']:.2f}",
            f"{m['max_ms']:.1f}",
        ]
        rows_per_s = m["rows_per_s"] if entry["rows_per_request"] > 1 else None
        rows.append(
            [
                name,
                entry["request"],
                entry["connections"],
                m["requests_per_s"],
                rows_per_s,
                *latencies,
                m["failed"],
                rounds,
            ]
        )
    header = ["Server", "Request", "Conn.", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms"]
    return table([*header, "max ms", "failed", "req/s per round"], rows)


# The peer table's rows: server, protocol, and the load names of its one-row and batch figures.
PEER_ROWS = (
    ("predictor", "native `/predict`, `/predict/batch`", "predictor", "predictor-batch"),
    ("predictor", "V2 JSON", "predictor-v2", "predictor-v2-batch"),
    ("predictor", "V2 binary tensors", "predictor-v2-binary", "predictor-v2-binary-batch"),
    ("predictor", "`/invocations` JSON†", "predictor-invocations", "predictor-invocations-batch"),
    ("predictor", "`/invocations` text/csv", None, "predictor-invocations-csv-batch"),
    ("MLServer", "V2 JSON", "mlserver", "mlserver-batch"),
    ("MLServer", "V2 binary tensors", None, "mlserver-binary-batch"),
    ("BentoML", "JSON `/classify`", "bentoml", "bentoml-batch"),
    ("mlflow models serve", "`/invocations` JSON‡", "mlflow", "mlflow-batch"),
    ("mlflow models serve", "`/invocations` dataframe_split", None, "mlflow-batch-split"),
    ("mlflow models serve", "`/invocations` text/csv", None, "mlflow-batch-csv"),
)
# Memory and cold start rows: the report's name, and the key of each in results.json.
PEER_PROCESSES = {
    "predictor (master + workers)": "predictor",
    "MLServer": "MLServer",
    "BentoML": "BentoML",
    "mlflow models serve -w 2": "mlflow models serve -w 2",
}


def peer_table(results: dict[str, Any]) -> list[str]:
    """One row per server and protocol: one row at 32 connections, 1,000 rows at 4."""
    load = results["load"]
    servers, missing = load["servers"], load.get("not_measured", {})

    def figures(name: str | None, field: str) -> list[Any]:
        if name not in servers:
            return ["not measured" if name in missing else "-", "-"]
        median = servers[name]["median"]
        return [f"{median[field]:,.0f}", f"{median['p99_ms']:.1f}"]

    rows = [
        [server, protocol, *figures(one, "requests_per_s"), *figures(batch, "rows_per_s")]
        for server, protocol, one, batch in PEER_ROWS
        if any(name in servers or name in missing for name in (one, batch) if name)
    ]
    one_row = f"one row: req/s ({load['connections']} conn.)"
    batches = f"{load['batch_rows']:,}-row batches: rows/s ({load['batch_connections']} conn.)"
    shapes = load["mlflow_shape"]
    lines = table(["Server", "Protocol", one_row, "p99 ms", batches, "p99 ms"], rows)
    lines += [
        "",
        f"† the same bodies as mlflow models serve: `{shapes['one_row']}` for one row, "
        "`dataframe_split` for batches. ‡ the shape mlflow answers fastest in a short probe: "
        f"`{shapes['one_row']}` for one row, `{shapes['batch']}` for batches. V2 bodies are the "
        "same for the predictor and MLServer (one `[n, 4]` FP64 tensor, no `outputs`: MLServer "
        "answers `predict`, the predictor `predict` and `predict_proba`); binary bodies are "
        "tritonclient's (FP32, `binary_data_output`).",
    ]
    if missing:
        lines += ["", "Not measured:", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(missing.items())]
    return lines


def peer_resources(results: dict[str, Any]) -> list[str]:
    memory, cold = results["reports"]["memory"], results["reports"]["cold_start"]
    rows = []
    for label, key in PEER_PROCESSES.items():
        m, seconds = memory.get(key), (cold.get(key) or {}).get("seconds")
        sizes = (
            [m["processes"], m["rss_mib"], m["pss_mib"], m["largest_rss_mib"], m["largest_pss_mib"]]
            if m
            else ["-", "not running", "-", "-", "-"]
        )
        rows.append([label, *sizes, "-" if seconds is None else f"{seconds:.1f}"])
    header = ["Server", "Processes", "RSS MiB", "PSS MiB", "largest RSS", "largest PSS"]
    return table([*header, "cold start s"], rows)


def recording_line(results: dict[str, Any]) -> str:
    """What the predictor's recording did under the load: every row logged, or not."""
    counts = results["reports"].get("recording")
    if counts is None:
        return "The predictor's recording counters could not be read after the load rounds."
    return (
        "The predictor's recording over all its load rounds: "
        f"{counts['iris_prediction_log_dropped_total']:,.0f} log records dropped, "
        f"{counts['iris_prediction_log_waits_total']:,.0f} requests held back until the log "
        "caught up (answers may outrun the log by PREDICTOR_PREDICTION_LOG_MAX_BACKLOG_ROWS "
        f"rows, no more), and {counts['iris_prediction_store_dropped_total']:,.0f} kept answers "
        "forgotten to hold the store's byte budget (the oldest first, by design)."
    )


def peer_settings(results: dict[str, Any]) -> list[str]:
    lines = []
    for label, peer in results["servers"].get("peers", {}).items():
        if "error" in peer:
            lines.append(f"- {label}: not run: {peer['error']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in peer["versions"].items())
        lines.append(f"- {label}: `{' '.join(peer['command'][1:])}`; {versions}.")
    return [
        *lines,
        '- MLServer runs with `"parallel_workers": 0` (inference in the server process): its '
        'inference worker pool dies at start on this machine ("There is no current event loop in '
        'thread \'MainThread\'"). `"debug": false` turns its per-request access log off.',
        "- BentoML: `@bentoml.service(workers=2)`, access log off. Both peers serve the "
        "registry's production version, loaded with the predictor's own loader and written with "
        "joblib, in virtual environments of their own (`.state/bench/venvs/`, scikit-learn "
        "pinned to the project's version).",
    ]


def swap_line(swap: dict[str, Any]) -> str:
    if "error" in swap:
        return f"Not measured: {swap['error']}"
    load = swap["load"]
    return (
        f"wrk drove the gateway `POST /predict` ({load['requests']:,} requests over "
        f"{load['duration_s']:.1f} s) while `production` moved from version "
        f"{swap['from_version']} to {swap['to_version']}, {swap['alias_moved_after_load_start_s']}"
        f" s in. Failed requests: {swap['failed_requests']}. The predictor's `GET /model` "
        f"first named version {swap['to_version']} after {cell(swap['first_new_answer_s'], 2)} s "
        f"and on {swap['consecutive_answers_required']} polls in a row after "
        f"{cell(swap['all_new_answers_s'], 2)} s (poll interval "
        f"{swap['predictor_poll_interval_s']:g} s; {swap['polls']} polls, "
        f"{swap['failed_polls']} failed)."
    )


def retrain_section(retrain: dict[str, Any]) -> list[str]:
    if "error" in retrain:
        return [f"Not measured: {retrain['error']}"]
    reported = retrain["reported_stage_seconds"] or {}
    rows: list[list[Any]] = [["queued", None, retrain["queued_s"]]]
    rows.append(["running, no stage reported", None, retrain["no_stage_s"]])
    rows += [
        [stage, reported.get(stage), s] for stage, s in retrain["polled_stage_seconds"].items()
    ]
    rows.append(["**total** (submitted → finished)", None, retrain["total_s"]])
    polled = f"Seconds (polled every {retrain['poll_interval_s']} s)"
    sequence = " → ".join(
        f"{step['phase']}{' ' + step['model'] if step['model'] else ''} {step['seconds']:.2f}"
        for step in retrain["steps"]
    )
    return [
        *table(
            ["Stage", "Seconds (job result)", polled],
            [[s, cell(a, 2), cell(b, 2)] for s, a, b in rows],
        ),
        "",
        f"Job {retrain['status']}. `registering` covers MLflow logging, model registration and "
        "the promotion gate; each stage sums both models (logistic regression and random "
        "forest). Polling misses stages shorter than its interval (their time goes to the one "
        f"before) and sees every attempt of a retried job. As polled: {sequence}.",
    ]


def bench_markdown(results: dict[str, Any]) -> str:
    load, reports = results["load"], results["reports"]
    cold = [
        [name, entry.get("seconds"), entry.get("how") or entry.get("error", "")]
        for name, entry in reports["cold_start"].items()
    ]
    memory = [
        [name, m["processes"], m["rss_mib"], m["pss_mib"]] if m else [name, "-", "not running", "-"]
        for name, m in reports["memory"].items()
    ]
    phases = ", ".join(f"{name} {seconds:g}" for name, seconds in results["phase_seconds"].items())
    lines = [
        "# `make bench` results",
        "",
        "Written by `bench/run.py`; every figure is also in `bench/results.json`.",
        "",
        "## Goals",
        "",
        *verdicts(results),
        "",
        "## Load rounds",
        "",
        f"Median of {load['rounds']} round(s) of {load['round_seconds']} s per server, servers "
        f"alternated round by round after a {load['warmup_seconds']} s warm-up each. req/s "
        "counts 2xx answers; `failed` sums non-2xx and socket errors over all rounds. "
        f"`mlflow models serve` gets `{load['mlflow_shape']['one_row']}` for one row and "
        f"`{load['mlflow_shape']['batch']}` for batches, the faster shape of a short probe. "
        f"Model version {results['model_version']} everywhere.",
        "",
        *load_table(results),
        "",
        "## Against the frameworks users would pick",
        "",
        "Each server on its own protocols, in the same rounds as above (medians). The predictor "
        "answers labels and probabilities for every row and logs every row; the peers answer "
        "labels and log nothing.",
        "",
        *peer_table(results),
        "",
        "Memory after the load rounds (each server's whole process tree, from "
        "/proc/<pid>/smaps_rollup) and cold start (process start → first 200 answer to a "
        "one-row prediction request):",
        "",
        *peer_resources(results),
        "",
        recording_line(results),
        "",
        *peer_settings(results),
        "",
        "## Hot swap under load",
        "",
        swap_line(results["hot_swap"]),
        "",
        "## Reports (not goals)",
        "",
        "### Cold start to ready",
        "",
        *table(["Server", "Seconds", "How"], cold),
        "",
        "### Memory after the load rounds (whole process tree)",
        "",
        *table(["Service", "Processes", "RSS MiB", "PSS MiB"], memory),
        "",
        "PSS shares pages common to forked workers between them; RSS counts them in every process.",
        "",
        "### Where a retrain's seconds go",
        "",
        *retrain_section(reports["retrain"]),
        "",
        "## Machine and versions",
        "",
        *machine_lines(results),
        f"- Load generator: {results['wrk']} (`-t{load['wrk_threads']}`, "
        f"`--timeout {load['wrk_timeout']}`)",
        f"- Predictor worker processes: {cell(results['servers']['predictor_workers'])}",
        f"- This run: {results['elapsed_s'] / 60:.1f} min; seconds per phase: {phases}",
        versions_line(results),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


# --- make soak --------------------------------------------------------------------------------

TRAFFIC_COLUMNS = {
    "Request": "request",
    "Clients": "clients",
    "Requests": "requests",
    "200": "answered_200",
    "Rows answered": "rows_answered",
    "Failed": "failed",
    "req/s": "requests_per_s",
    "p50 ms": "p50",
    "p99 ms": "p99",
    "max ms": "max",
}
JOB_COLUMNS = {
    "Job": "label",
    "Id": "short_id",
    "Submitted s": "submitted_s",
    "Final status": "final_status",
    "Took s": "seconds",
    "404s": "not_found_answers",
    "503s (Redis down)": "unavailable_answers",
    "Deliveries": "deliveries",
    "Same key sent again": "replayed",
}
MOVE_COLUMNS = {
    "Move": "label",
    "Version": "to_version",
    "From": "previous_version",
    "Sent at s": "requested_s",
    "POST /promote": "promote_answer",
    "First answer naming it, s after": "first_new_answer_after_s",
    "All answers name it, s after": "all_new_answers_after_s",
}
MEMORY_COLUMNS = {
    "Service": "service",
    "RSS start MiB": "rss_start",
    "RSS end MiB": "rss_end",
    "Growth MiB": "rss_growth_mib",
    "Growth %": "rss_growth_pct",
    "Peak RSS MiB": "peak_rss_mib",
    "PSS growth MiB": "pss_growth_mib",
    "Processes replaced": "processes_replaced",
}


def traffic_section(traffic: dict[str, Any]) -> list[str]:
    lines = [
        *columns(TRAFFIC_COLUMNS, [{**k, **k["latency_ms"]} for k in traffic["by_kind"].values()]),
        "",
        f"{traffic['seconds']:g} s of traffic, one request at a time per client thread. "
        f"Failures: {traffic['failures'] or 'none'}. Answers per model version: "
        f"{traffic['answers_per_model_version']}.",
    ]
    samples = [
        f"- {s['t']:.1f} s, {s['kind']}, {s['failure']}, `{s['request_id']}`: {s['detail']}"
        for s in traffic["failure_samples"]
    ]
    return lines + (["", "First failures:", "", *samples] if samples else [])


def jobs_section(jobs: list[dict[str, Any]]) -> list[str]:
    def replayed(job: dict[str, Any]) -> str:
        answers = (
            f"{r['answer']} {'same job' if r['same_job'] else 'ANOTHER JOB'}"
            for r in job["replays"]
        )
        return ", ".join(answers) or "-"

    records = [
        {**j, "short_id": (j["job_id"] or "not accepted")[:8], "replayed": replayed(j)}
        for j in jobs
    ]
    errors = [f"- {j['label']}: {j['error']}" for j in jobs if j["error"]]
    return [*columns(JOB_COLUMNS, records), *(["", "Job errors:", "", *errors] if errors else [])]


def soak_memory_section(memory: dict[str, Any]) -> list[str]:
    records = [
        {
            **m,
            "service": name,
            "rss_start": (m["start"] or {}).get("rss_mib"),
            "rss_end": (m["end"] or {}).get("rss_mib"),
        }
        for name, m in memory["services"].items()
    ]
    series = memory["rss_mib_series"]
    # A handful of samples spread over the run, to tell a plateau from a climb.
    picked = series[:: max(1, len(series) // 8)]
    trend = [
        f"- {name}: " + ", ".join(f"{cell(s[name])} ({s['t']:.0f} s)" for s in picked)
        for name in memory["services"]
    ]
    return [
        *columns(MEMORY_COLUMNS, records),
        "",
        f"RSS and PSS summed over each service's process tree, at {memory['start_s']:.0f} s "
        f"(after the warm-up) and {memory['end_s']:.0f} s (traffic stopped). RSS over time:",
        "",
        *trend,
    ]


def soak_sections(soak: dict[str, Any]) -> dict[str, list[str]]:
    """The soak report's sections after its checks, by title."""
    restart, hostile, mib = soak["redis_restart"], soak["hostile"], 1024 * 1024
    before, after = hostile.get("redis_before", {}), hostile.get("redis_after", {})
    slow, flood = hostile.get("slow_clients", {}), hostile.get("flood", {})
    log, traffic, stop, store = (
        soak["prediction_log"],
        soak["traffic"],
        soak["predictor_stop"],
        soak["feedback_store"],
    )
    moves = [
        *columns(MOVE_COLUMNS, soak["alias_moves"]),
        "",
        "Seconds after `POST /promote` was sent, seen in the traffic's own answers "
        f"(predictor alias poll interval {soak['predictor_poll_interval_s']:g} s).",
    ]
    if restart:
        states, running, queued = (
            restart["job_status_at_stop"],
            restart["running_job"],
            restart["queued_job"],
        )
        redis_restart = (
            f"SIGTERM at {restart['stopped_at_s']:.1f} s, job {running} {states.get(running)} and "
            f"job {queued} {states.get(queued)}: exited (code {restart['exit_code']}) in "
            f"{restart['stop_s']:.2f} s, answered again {restart['start_s']:.2f} s after that "
            f"({restart['down_s']:.2f} s down in all); appendonly {restart['appendonly']}."
        )
    feedback = (
        f"The predictor keeps each answered request in Redis (`{store['index']}`) for the "
        f"gateway's POST /feedback: {store['kept']:,} of {store['answered']:,} kept."
    )
    if store["not_kept"]:
        feedback += (
            f" The {store['not_kept']:,} not kept were answered between "
            f"{store['not_kept_answered_from_s']:.2f} s and {store['not_kept_answered_to_s']:.2f} s"
            + (
                f" (Redis stopped at {restart['stopped_at_s']:.2f} s for {restart['down_s']} s)"
                if restart
                else ""
            )
            + "."
        )
    findings = soak["service_logs"]
    errors = [f"    {line}" for f in findings.values() for line in f["first_errors"]]
    return {
        "Traffic through the gateway": traffic_section(traffic),
        "Retrain jobs": jobs_section(soak["jobs"]),
        "Alias moves": moves
        if soak["alias_moves"]
        else ["No move: the first job did not register a version in time."],
        "Redis restart": [redis_restart if restart else "Not done (the run ended first)."],
        "Hostile clients and Redis memory": [
            f"- Trickling uploads: {slow.get('connections', 0):,} connections at "
            f"{slow.get('started_s', 0):.1f} s, answered {slow.get('outcomes', {})} within "
            f"{slow.get('seconds', 0)} s.",
            f"- Anonymous flood: {flood.get('batches', 0)} batches of "
            f"{flood.get('rows_each', 0):,} rows at {flood.get('started_s', 0):.1f} s, answered "
            f"{flood.get('outcomes', {})} in {flood.get('seconds', 0)} s.",
            f"- Redis memory: {before.get('used_memory', 0) / mib:.1f} MiB before the traffic, "
            f"{after.get('used_memory', 0) / mib:.1f} MiB after (cap "
            f"{after.get('maxmemory', 0) / mib:.0f} MiB, policy {after.get('maxmemory_policy')}); "
            f"kept answers {after.get('kept_answer_bytes', 0) / mib:.1f} MiB of a "
            f"{soak['store_max_bytes'] / mib:.0f} MiB budget.",
        ],
        "Memory": soak_memory_section(soak["memory"]),
        "Prediction log": [
            f"After a graceful stop of the predictor ({stop['seconds']} s, "
            f"{'SIGKILLed' if stop['killed'] else 'no SIGKILL'}): {log['lines']:,} lines holding "
            f"{log['rows']:,} rows in {len(log['files'])} file(s), for {traffic['answered_200']:,} "
            f"requests answered 200 holding {traffic['rows_answered']:,} rows. Answered but not "
            f"logged: {log['answered_not_logged']}; logged but not answered 200: "
            f"{log['logged_not_answered']}; logged twice: {log['logged_twice']}; unreadable "
            f"lines: {log['unreadable_lines']}."
        ],
        "Predictions kept for feedback (reported, not judged)": [feedback],
        "Service logs": [
            f"- `{name}`: " + ", ".join(f"{level} {count}" for level, count in f["counts"].items())
            for name, f in findings.items()
        ]
        + (["", "First errors:", "", *errors] if errors else [])
        if findings
        else ["No warning, error or traceback in any service's log."],
        "Timeline": [f"- {e['t']:.1f} s: {e['event']}" for e in soak["timeline"]],
    }


def soak_markdown(results: dict[str, Any]) -> str:
    soak = results["soak"]
    lines = [
        "# `make soak` results",
        "",
        f"Written by `bench/soak.py`; every figure is also in `{Path(results['output']).name}`. "
        f"Times are seconds since the traffic started (a {soak['warmup_s']:g} s warm-up, then "
        f"the {soak['window_s']:g} s run).",
        "",
        "## Must hold",
        "",
        *verdicts(results, "checks"),
    ]
    for title, body in soak_sections(soak).items():
        lines += ["", f"## {title}", "", *body]
    return "\n".join(
        [
            *lines,
            "",
            "## Machine",
            "",
            *machine_lines(results),
            "",
            f"Command: `{results['command']}`",
            "",
        ]
    )


# --- make profile -----------------------------------------------------------------------------


def frame_table(frames: list[dict[str, Any]]) -> list[str]:
    return table(
        ["Frame", "Samples", "Share"],
        [[f"`{f['frame']}`", f["samples"], percent(f["share"])] for f in frames],
    )


def profile_section(entry: dict[str, Any], top: int, project: str) -> list[str]:
    wrk, latency = entry["wrk"], entry["wrk"]["latency_ms"]
    rows = f", {wrk['rows_per_s']:,.0f} rows/s" if wrk["rows_per_request"] > 1 else ""
    threads = [[t["thread"], t["samples"], percent(t["share"])] for t in entry["threads"]]
    buckets = [
        [b["bucket"], percent(b["share"]), percent(b["self_share"])]
        for b in entry["buckets"]
        if b["share"] >= 0.01
    ]
    return [
        f"## {entry['name']}: {entry['request']}, {entry['connections']} connections",
        "",
        f"wrk: {wrk['requests_per_s']:,.1f} requests/s{rows}, p50 {latency['p50']:.1f} ms, "
        f"p99 {latency['p99']:.1f} ms, {wrk['failed']} failed. Worker {entry['worker_pid']} "
        f"(of {entry['worker_pids']}): {entry['worker_cpu_cores']} cores of CPU, "
        f"{entry['samples']:,} samples, the GIL held {percent(entry['gil_held_share'])} "
        "of the time.",
        "",
        "Threads (share of the samples):",
        "",
        *table(["Thread", "Samples", "Share"], threads),
        "",
        "Libraries (inclusive: a stack through the library; self: the library's own frame on top):",
        "",
        *table(["Bucket", "Inclusive", "Self"], buckets),
        "",
        f"Top {top} frames by self time:",
        "",
        *frame_table(entry["self"]),
        "",
        f"Top {top} frames of this project's code ({project}) by inclusive time:",
        "",
        *frame_table(entry["inclusive_project"]),
        "",
    ]


def profile_markdown(results: dict[str, Any], top: int, project: str) -> str:
    summary = [
        [
            f"{e['name']}: {e['request']}",
            e["connections"],
            f"{e['wrk']['requests_per_s']:,.0f}",
            f"{e['wrk']['latency_ms']['p99']:.1f}",
            e["worker_cpu_cores"],
            percent(e["gil_held_share"]),
            f"`{e['self'][0]['frame']}` {percent(e['self'][0]['share'])}" if e["self"] else "-",
        ]
        for e in results["loads"]
    ]
    lines = [
        "# `make profile` results",
        "",
        "Written by `bench/profile.py`; the same figures are in `bench/profile.json`. One worker "
        "process of the server under load (the busier of its two during the warm-up) is sampled "
        f"by `{results['py_spy']}` at {results['sample_rate']} Hz for {results['seconds']} s with "
        "`--gil`: each sample is the thread holding the GIL, so shares are of the worker's Python "
        "time. C code that keeps the GIL counts on the Python frame that called it: uvloop's "
        "socket writes on `RequestResponseCycle.send`, its event loop on `Runner.run`, "
        "pydantic-core, orjson and numpy on their callers. Time with the GIL released is not "
        "sampled; on a busy machine a worker also holds the GIL while it waits for a core, so "
        "`GIL held` can exceed its CPU time. py-spy itself costs the worker some throughput. "
        "Worker CPU is in cores (CPU seconds per second) while py-spy recorded.",
        "",
        provenance(results),
        "",
        *table(
            ["Load", "Conns", "req/s", "p99 ms", "Worker CPU", "GIL held", "Top self frame"],
            summary,
        ),
        "",
    ]
    for entry in results["loads"]:
        lines += profile_section(entry, top, project)
    lines += [
        "## Machine and versions",
        "",
        *machine_lines(results),
        f"- Load generator: {results['wrk']}; profiler: {results['py_spy']}",
        versions_line(results),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)
