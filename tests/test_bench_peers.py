"""`make bench` against MLServer, BentoML and `mlflow models serve`: the goal verdicts and the
request bodies, checked on made-up figures (no process is started)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench import loads as payloads
from bench import servers
from bench.common import ROOT
from bench.goals import evaluate_all
from bench.report import render


def summary(requests_per_s: float, p99_ms: float, rows_per_request: int = 1) -> dict[str, Any]:
    return {"requests_per_s": requests_per_s, "rows_per_s": requests_per_s * rows_per_request,
            "p99_ms": p99_ms, "failed": 0}  # fmt: skip


def peer_goals(
    summaries: dict[str, Any], memory: dict | None = None, missing: dict | None = None
) -> dict[str, Any]:
    named = summaries | {f"memory:{name}": tree for name, tree in (memory or {}).items()}
    return {g["key"]: g for g in evaluate_all(named, missing or {}, 5.0, "2")}


def test_the_one_row_goal_is_against_the_faster_peer_and_p99_against_the_lowest() -> None:
    summaries = {
        "predictor": summary(9_000, 10.0),
        "mlserver": summary(948, 60.0),
        "bentoml": summary(566, 45.0),
        "mlflow": summary(400, 250.0),
    }
    goals = peer_goals(summaries)

    throughput = goals["peers_one_row_throughput"]
    assert throughput["ratio"] == round(9_000 / 948, 3)
    assert throughput["met"] is False  # 9.49x is short of 10x
    assert "MLServer" in throughput["measured"]

    p99 = goals["peers_one_row_p99"]
    assert p99["ratio"] == round(10.0 / 45.0, 3)  # BentoML's p99 is the lowest, not MLServer's
    assert p99["met"] is False


def test_binary_batches_are_judged_against_the_best_batch_figure_of_any_peer_protocol() -> None:
    summaries = {
        "predictor-v2-binary-batch": summary(4_000, 5.0, 1000),
        "mlserver-batch": summary(700, 20.0, 1000),
        "bentoml-batch": summary(200, 40.0, 1000),
        "mlflow-batch-csv": summary(900, 30.0, 1000),
    }
    goal = peer_goals(summaries)["v2_binary_batch"]
    assert goal["ratio"] == round(4_000 / 900, 3)
    assert goal["met"] is False
    assert "text/csv" in goal["measured"]


def test_a_goal_whose_load_was_not_measured_is_not_met_and_says_why() -> None:
    summaries = {"predictor": summary(9_000, 10.0), "mlserver": summary(900, 60.0)}
    missing = {"predictor-v2": "predictor-v2 answered 404: {'detail': 'Not Found'}"}
    goal = peer_goals(summaries, missing=missing)["v2_json_one_row"]
    assert goal["met"] is False
    assert goal["ratio"] is None
    assert "predictor-v2 answered 404" in goal["measured"]


def test_memory_goals_hold_only_when_both_rss_and_pss_are_within() -> None:
    def tree(rss: float, pss: float, largest_rss: float, largest_pss: float) -> dict:
        return {
            "processes": 3,
            "rss_mib": rss,
            "pss_mib": pss,
            "largest_rss_mib": largest_rss,
            "largest_pss_mib": largest_pss,
        }

    memory = {
        # The predictor's largest process is below MLServer's in PSS but not in RSS.
        "predictor": tree(600, 400, 230, 150),
        "MLServer": tree(210, 205, 210, 205),
        "mlflow models serve -w 2": tree(1_300, 900, 450, 300),
    }
    goals = peer_goals({}, memory)
    assert goals["memory_worker_vs_mlserver"]["met"] is False
    assert goals["memory_worker_vs_mlserver"]["ratio"] == round(230 / 210, 3)
    assert goals["memory_total_vs_mlflow"]["met"] is True
    assert goals["memory_total_vs_mlflow"]["ratio"] == round(600 / 1_300, 3)


def test_the_binary_body_is_a_json_header_then_the_rows_as_little_endian_float32() -> None:
    flowers = payloads.iris_flowers(3)
    body, header_length = payloads.v2_binary_body(flowers)
    header = json.loads(body[:header_length])
    tensor = header["inputs"][0]
    assert tensor["shape"] == [3, 4]
    assert tensor["datatype"] == "FP32"
    assert tensor["parameters"]["binary_data_size"] == len(body) - header_length == 3 * 4 * 4
    rows = np.frombuffer(body[header_length:], dtype="<f4").reshape(3, 4)
    expected = [[flower[name] for name in payloads.FEATURE_NAMES] for flower in flowers]
    np.testing.assert_allclose(rows, np.asarray(expected, dtype=np.float32))
    assert header["parameters"]["binary_data_output"] is True


def test_the_peer_table_shows_a_load_that_was_not_measured_instead_of_leaving_it_out() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    edited = copy.deepcopy(results)
    del edited["load"]["servers"]["mlserver-batch"]
    edited["load"]["not_measured"] = {"mlserver-batch": "mlserver-batch answered 500"}
    rows = render("bench.md", edited).splitlines()
    one_row = results["load"]["servers"]["mlserver"]["median"]
    figures = f"{one_row['requests_per_s']:,.0f} | {one_row['p99_ms']:.1f}"
    assert f"| MLServer | V2 JSON | {figures} | not measured | - |" in rows
    assert "- `mlserver-batch`: mlserver-batch answered 500" in rows
    assert not any(row.startswith("| MLServer | V2 binary tensors |") for row in rows)
    edited["load"]["not_measured"] = {}
    assert "Not measured:" not in render("bench.md", edited)


def test_the_constant_server_runs_the_predictors_own_command_with_the_constant_app(
    tmp_path: Path,
) -> None:
    class Stack:
        work = tmp_path

        def stack_env(self) -> dict[str, str]:
            env = {"STACK_PREDICTORS": "1", "STACK_PREDICTOR_PORT": "9000"}
            return env | {"STACK_PREDICTOR_VENV": "/venv", "PROMETHEUS_MULTIPROC_DIR": "/m"}

    command, env = servers.predictor_launch(Stack(), 12345)  # type: ignore[arg-type]
    assert command[-1].endswith(
        "PREDICTOR_PORT=$((12345 + 0)) exec /venv/bin/python -m bench.constant_app"
    )
    assert (env["PREDICTOR_PORT"], env["PREDICTOR_HOST"]) == ("12345", "127.0.0.1")
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "constant-metrics")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
