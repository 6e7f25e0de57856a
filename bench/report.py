"""Write the run's results: bench/results.json (everything), bench/results.md (tables) and the
goals table between the bench markers of the README's Performance section."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def goals_table(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            g["goal"],
            g["target"],
            g["measured"],
            "-" if g["ratio"] is None else f"{g['ratio']:.3g}x",
            "✅" if g["met"] else "❌",
        ]
        for g in results["goals"]
    ]
    met = sum(1 for g in results["goals"] if g["met"])
    return [
        *_table(["Goal", "Target", "Measured", "Ratio", "Met"], rows),
        "",
        f"{met} of {len(results['goals'])} goals met. {provenance(results)}",
    ]


def provenance(results: dict[str, Any]) -> str:
    git, machine = results["git"], results["machine"]
    commit = git["commit"][:10] + (" with uncommitted changes" if git["dirty"] else "")
    return (
        f"Measured {results['timestamp']} on commit {commit}, {machine['cores']} cores "
        f"({machine['cpu']}), by `{results['command']}` in {results['elapsed_s'] / 60:.1f} min."
    )


def load_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in results["load"]["servers"].items():
        median = entry["median"]
        rounds = ", ".join(f"{r['requests_per_s']:,.0f}" for r in entry["rounds"])
        rows.append(
            [
                name,
                entry["request"],
                entry["connections"],
                median["requests_per_s"],
                median["rows_per_s"] if entry["rows_per_request"] > 1 else None,
                f"{median['p50_ms']:.2f}",
                f"{median['p90_ms']:.2f}",
                f"{median['p99_ms']:.2f}",
                f"{median['max_ms']:.1f}",
                median["failed"],
                rounds,
            ]
        )
    header = ["Server", "Request", "Conn.", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms"]
    return _table([*header, "max ms", "failed", "req/s per round"], rows)


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
PEER_PROCESSES = (
    ("predictor (master + workers)", "predictor", "predictor"),
    ("MLServer", "MLServer", "MLServer"),
    ("BentoML", "BentoML", "BentoML"),
    ("mlflow models serve -w 2", "mlflow models serve -w 2", "mlflow models serve -w 2"),
)


def peer_table(results: dict[str, Any]) -> list[str]:
    """One row per server and protocol: one row at 32 connections, 1,000 rows at 4."""
    load = results["load"]
    servers, missing = load["servers"], load.get("not_measured", {})

    def figures(name: str | None, field: str) -> list[Any]:
        if name is None:
            return ["-", "-"]
        if name not in servers:
            return ["not measured" if name in missing else "-", "-"]
        median = servers[name]["median"]
        return [f"{median[field]:,.0f}", f"{median['p99_ms']:.1f}"]

    rows = [
        [server, protocol, *figures(one, "requests_per_s"), *figures(batch, "rows_per_s")]
        for server, protocol, one, batch in PEER_ROWS
        if any(name in servers or name in missing for name in (one, batch) if name)
    ]
    header = [
        "Server",
        "Protocol",
        f"one row: req/s ({load['connections']} conn.)",
        "p99 ms",
        f"{load['batch_rows']:,}-row batches: rows/s ({load['batch_connections']} conn.)",
        "p99 ms",
    ]
    shapes = load["mlflow_shape"]
    lines = _table(header, rows)
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
    reports = results["reports"]
    memory, cold = reports["memory"], reports["cold_start"]
    rows = []
    for label, memory_key, cold_key in PEER_PROCESSES:
        m = memory.get(memory_key)
        start = cold.get(cold_key) or {}
        seconds = start.get("seconds")
        rows.append(
            [
                label,
                m["processes"] if m else "-",
                m["rss_mib"] if m else "not running",
                m["pss_mib"] if m else "-",
                m.get("largest_rss_mib") if m else "-",
                m.get("largest_pss_mib") if m else "-",
                "-" if seconds is None else f"{seconds:.1f}",
            ]
        )
    header = ["Server", "Processes", "RSS MiB", "PSS MiB", "largest RSS", "largest PSS"]
    return _table([*header, "cold start s"], rows)


def recording_section(results: dict[str, Any]) -> list[str]:
    """What the predictor's recording did under the load: every row logged, or not."""
    counts = results["reports"].get("recording")
    if counts is None:
        return ["The predictor's recording counters could not be read after the load rounds."]
    waits = counts["iris_prediction_log_waits_total"]
    dropped = counts["iris_prediction_log_dropped_total"]
    forgotten = counts["iris_prediction_store_dropped_total"]
    return [
        f"The predictor's recording over all its load rounds: {dropped:,.0f} log records "
        f"dropped, {waits:,.0f} requests held back until the log caught up (answers may "
        "outrun the log by PREDICTOR_PREDICTION_LOG_MAX_BACKLOG_ROWS rows, no more), and "
        f"{forgotten:,.0f} kept answers forgotten to hold the store's byte budget (the oldest "
        "first, by design)."
    ]


def peer_settings(results: dict[str, Any]) -> list[str]:
    peers = results["servers"].get("peers", {})
    lines = []
    for label, peer in peers.items():
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


def swap_section(results: dict[str, Any]) -> list[str]:
    swap = results["hot_swap"]
    if "error" in swap:
        return [f"Not measured: {swap['error']}"]
    load = swap["load"]
    return [
        f"wrk drove the gateway `POST /predict` ({load['requests']:,} requests over "
        f"{load['duration_s']:.1f} s) while `production` moved from version "
        f"{swap['from_version']} to {swap['to_version']}, {swap['alias_moved_after_load_start_s']}"
        f" s in. Failed requests: {swap['failed_requests']}. The predictor's `GET /model` "
        f"first named version {swap['to_version']} after {_cell(swap['first_new_answer_s'], 2)} s "
        f"and on {swap['consecutive_answers_required']} polls in a row after "
        f"{_cell(swap['all_new_answers_s'], 2)} s (poll interval "
        f"{swap['predictor_poll_interval_s']:g} s; {swap['polls']} polls, "
        f"{swap['failed_polls']} failed).",
    ]


def reports_section(results: dict[str, Any]) -> list[str]:
    reports = results["reports"]
    lines = ["### Cold start to ready", ""]
    lines += _table(
        ["Server", "Seconds", "How"],
        [
            [name, entry.get("seconds"), entry.get("how") or entry.get("error", "")]
            for name, entry in reports["cold_start"].items()
        ],
    )
    lines += ["", "### Memory after the load rounds (whole process tree)", ""]
    lines += _table(
        ["Service", "Processes", "RSS MiB", "PSS MiB"],
        [
            [name, m["processes"], m["rss_mib"], m["pss_mib"]]
            if m
            else [name, "-", "not running", "-"]
            for name, m in reports["memory"].items()
        ],
    )
    lines += [
        "",
        "PSS shares pages common to forked workers between them; RSS counts them in every process.",
        "",
        "### Where a retrain's seconds go",
        "",
    ]
    retrain = reports["retrain"]
    if "error" in retrain:
        lines.append(f"Not measured: {retrain['error']}")
        return lines
    reported = retrain["reported_stage_seconds"] or {}
    rows: list[list[Any]] = [["queued", None, retrain["queued_s"]]]
    rows.append(["running, no stage reported", None, retrain["no_stage_s"]])
    rows += [
        [stage, reported.get(stage), seconds]
        for stage, seconds in retrain["polled_stage_seconds"].items()
    ]
    rows.append(["**total** (submitted → finished)", None, retrain["total_s"]])
    lines += _table(
        ["Stage", "Seconds (job result)", f"Seconds (polled every {retrain['poll_interval_s']} s)"],
        [[stage, _cell(a, 2), _cell(b, 2)] for stage, a, b in rows],
    )
    sequence = " → ".join(
        f"{step['phase']}{' ' + step['model'] if step['model'] else ''} {step['seconds']:.2f}"
        for step in retrain["steps"]
    )
    lines += [
        "",
        f"Job {retrain['status']}. `registering` covers MLflow logging, model registration and "
        "the promotion gate; each stage sums both models (logistic regression and random "
        "forest). Polling misses stages shorter than its interval (their time goes to the one "
        f"before) and sees every attempt of a retried job. As polled: {sequence}.",
    ]
    return lines


def machine_section(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    phases = ", ".join(f"{name} {seconds:g}" for name, seconds in results["phase_seconds"].items())
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    return [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB",
        f"- OS: {machine['os']}, kernel {machine['kernel']}, Python {machine['python']}",
        f"- Load average (1, 5, 15 min) before: {results['load_average']['before']}, "
        f"after: {results['load_average']['after']}",
        *([f"- Note on this run: {results['note']}"] if results.get("note") else []),
        f"- Load generator: {results['wrk']} (`-t{results['load']['wrk_threads']}`, "
        f"`--timeout {results['load']['wrk_timeout']}`)",
        f"- Predictor worker processes: {_cell(results['servers']['predictor_workers'])}",
        f"- This run: {results['elapsed_s'] / 60:.1f} min; seconds per phase: {phases}",
        f"- Libraries: {versions}",
    ]


def markdown(results: dict[str, Any]) -> str:
    load = results["load"]
    lines = [
        "# `make bench` results",
        "",
        "Written by `bench/run.py`; every figure is also in `bench/results.json`.",
        "",
        "## Goals",
        "",
        *goals_table(results),
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
        *recording_section(results),
        "",
        *peer_settings(results),
        "",
        "## Hot swap under load",
        "",
        *swap_section(results),
        "",
        "## Reports (not goals)",
        "",
        *reports_section(results),
        "",
        "## Machine and versions",
        "",
        *machine_section(results),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, results: dict[str, Any]) -> bool:
    """Replace the table between the bench markers; False when the markers are missing."""
    text = readme.read_text()
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.DOTALL)
    if not pattern.search(text):
        return False
    block = "\n".join([README_START, *goals_table(results), README_END])
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


def write_results(results: dict[str, Any], json_path: Path, md_path: Path) -> None:
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(markdown(results))
