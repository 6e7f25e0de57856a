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


TEMPLATES = Path(__file__).with_name("templates")


def render(template: str, fields: dict[str, Any], **sections: Any) -> str:
    """bench/templates/`template`.md filled in with str.format from `fields` and `sections`; a
    section given as a list of lines is joined."""
    text = (TEMPLATES / f"{template}.md").read_text()
    blocks = {name: "\n".join(v) if isinstance(v, list) else v for name, v in sections.items()}
    return text.format(**fields, **blocks)


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
    return lines


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
    reports = results["reports"]
    cold = [
        [name, entry.get("seconds"), entry.get("how") or entry.get("error", "")]
        for name, entry in reports["cold_start"].items()
    ]
    memory = [
        [name, m["processes"], m["rss_mib"], m["pss_mib"]] if m else [name, "-", "not running", "-"]
        for name, m in reports["memory"].items()
    ]
    return render(
        "bench",
        results,
        goals_table=verdicts(results),
        load_table=load_table(results),
        peer_table=peer_table(results),
        peer_resources=peer_resources(results),
        recording=recording_line(results),
        peer_settings=peer_settings(results),
        swap=swap_line(results["hot_swap"]),
        cold_start=table(["Server", "Seconds", "How"], cold),
        memory=table(["Service", "Processes", "RSS MiB", "PSS MiB"], memory),
        retrain=retrain_section(reports["retrain"]),
        machine_lines=machine_lines(results),
        predictor_workers=cell(results["servers"]["predictor_workers"]),
        minutes=f"{results['elapsed_s'] / 60:.1f}",
        phases=", ".join(f"{name} {s:g}" for name, s in results["phase_seconds"].items()),
        versions_line=versions_line(results),
    )


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


def soak_markdown(results: dict[str, Any]) -> str:
    soak = results["soak"]
    restart, hostile, store, mib = (
        soak["redis_restart"],
        soak["hostile"],
        soak["feedback_store"],
        1024 * 1024,
    )
    before, after = hostile.get("redis_before", {}), hostile.get("redis_after", {})
    moves = [
        *columns(MOVE_COLUMNS, soak["alias_moves"]),
        "",
        "Seconds after `POST /promote` was sent, seen in the traffic's own answers "
        f"(predictor alias poll interval {soak['predictor_poll_interval_s']:g} s).",
    ]
    redis_restart = "Not done (the run ended first)."
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
    not_kept = ""
    if store["not_kept"]:
        not_kept = (
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
    logs = [
        f"- `{name}`: " + ", ".join(f"{level} {count}" for level, count in f["counts"].items())
        for name, f in findings.items()
    ] + (["", "First errors:", "", *errors] if errors else [])
    return render(
        "soak",
        results,
        output_name=Path(results["output"]).name,
        checks_table=verdicts(results, "checks"),
        traffic=traffic_section(soak["traffic"]),
        jobs=jobs_section(soak["jobs"]),
        moves=moves
        if soak["alias_moves"]
        else "No move: the first job did not register a version in time.",
        redis_restart=redis_restart,
        slow={"connections": 0, "started_s": 0, "outcomes": {}, "seconds": 0}
        | hostile.get("slow_clients", {}),
        flood={"batches": 0, "rows_each": 0, "started_s": 0, "outcomes": {}, "seconds": 0}
        | hostile.get("flood", {}),
        redis_after={"maxmemory_policy": None} | after,
        mib={
            "used_before": before.get("used_memory", 0) / mib,
            "used_after": after.get("used_memory", 0) / mib,
            "cap": after.get("maxmemory", 0) / mib,
            "kept": after.get("kept_answer_bytes", 0) / mib,
            "budget": soak["store_max_bytes"] / mib,
        },
        memory=soak_memory_section(soak["memory"]),
        stop=soak["predictor_stop"],
        killed="SIGKILLed" if soak["predictor_stop"]["killed"] else "no SIGKILL",
        log=soak["prediction_log"],
        log_files=str(len(soak["prediction_log"]["files"])),
        traffic_figures=soak["traffic"],
        store=store,
        not_kept=not_kept,
        service_logs=logs if findings else "No warning, error or traceback in any service's log.",
        timeline=[f"- {e['t']:.1f} s: {e['event']}" for e in soak["timeline"]],
        machine_lines=machine_lines(results),
    )


# --- make profile -----------------------------------------------------------------------------


def frame_table(frames: list[dict[str, Any]]) -> list[str]:
    return table(
        ["Frame", "Samples", "Share"],
        [[f"`{f['frame']}`", f["samples"], percent(f["share"])] for f in frames],
    )


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
    sections = [
        render(
            "profile-load",
            entry,
            rows=f", {entry['wrk']['rows_per_s']:,.0f} rows/s"
            if entry["wrk"]["rows_per_request"] > 1
            else "",
            gil=percent(entry["gil_held_share"]),
            top=str(top),
            project=project,
            threads_table=table(
                ["Thread", "Samples", "Share"],
                [[t["thread"], t["samples"], percent(t["share"])] for t in entry["threads"]],
            ),
            buckets_table=table(
                ["Bucket", "Inclusive", "Self"],
                [
                    [b["bucket"], percent(b["share"]), percent(b["self_share"])]
                    for b in entry["buckets"]
                    if b["share"] >= 0.01
                ],
            ),
            self_table=frame_table(entry["self"]),
            inclusive_table=frame_table(entry["inclusive_project"]),
        )
        for entry in results["loads"]
    ]
    header = ["Load", "Conns", "req/s", "p99 ms", "Worker CPU", "GIL held", "Top self frame"]
    return render(
        "profile",
        results,
        provenance=provenance(results),
        summary=table(header, summary),
        sections="\n".join(sections),
        machine_lines=machine_lines(results),
        versions_line=versions_line(results),
    )
