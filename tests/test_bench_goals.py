"""`make bench`'s goals: each record evaluated from named figures, met, missed or missing."""

from __future__ import annotations

from typing import Any

from bench.goals import GoalRecord, bench_goals, evaluate, evaluate_all

RECORDS = {record.key: record for record in bench_goals(poll_interval_s=5.0, new_version="2")}


def load(requests_per_s: float, p99_ms: float = 10.0, failed: int = 0) -> dict[str, float]:
    rows_per_s = requests_per_s * 1000
    return {"requests_per_s": requests_per_s, "rows_per_s": rows_per_s, "p99_ms": p99_ms} | {
        "failed": failed
    }


def verdict(key: str, figures: dict, missing: dict | None = None) -> dict[str, Any]:
    return evaluate(RECORDS[key], figures, missing or {})


def test_every_goal_of_the_issues_is_there_once_in_the_reports_order() -> None:
    assert list(RECORDS) == [
        "predictor_throughput", "predictor_p99", "gateway_throughput", "gateway_errors",
        "batch_throughput", "predictor_vs_constant", "swap_errors", "swap_time",
        "peers_one_row_throughput", "peers_one_row_p99", "v2_json_one_row", "v2_json_batch",
        "v2_binary_batch", "native_batch_vs_mlserver", "invocations_one_row",
        "invocations_split_batch", "invocations_csv_batch", "memory_worker_vs_mlserver",
        "memory_total_vs_mlflow",
    ]  # fmt: skip


def test_every_goal_is_evaluated_and_a_run_without_figures_meets_none() -> None:
    verdicts = evaluate_all({}, {"predictor": "the stack did not start"})
    assert [v["key"] for v in verdicts] == list(RECORDS)
    assert not any(v["met"] for v in verdicts)
    assert verdicts[0]["measured"] == "not measured: predictor: the stack did not start"


def test_a_goal_met() -> None:
    goal = verdict("predictor_throughput", {"predictor": load(8_101), "mlflow": load(583.5)})
    assert goal["met"] is True
    assert goal["ratio"] == round(8_101 / 583.5, 3)
    assert goal["measured"] == "8,101 vs 584 req/s"
    assert goal["target"] == "≥ 10x"


def test_a_goal_missed() -> None:
    figures = {"predictor-batch": load(833.3), "mlflow-batch": load(309.2)}
    goal = verdict("batch_throughput", figures)
    assert goal["met"] is False
    assert goal["ratio"] == round(833.3 / 309.2, 3)
    assert goal["measured"] == "833,300 vs 309,200 rows/s"


def test_a_goal_whose_figure_is_missing_is_not_met_and_says_why() -> None:
    why = {"constant": "LaunchError: the predictor's command names none\nTraceback ..."}
    goal = verdict("predictor_vs_constant", {"predictor": load(8_000)}, why)
    assert goal["met"] is False
    assert goal["ratio"] is None
    assert (
        goal["measured"]
        == "not measured: constant: LaunchError: the predictor's command names none"
    )
    assert verdict("predictor_p99", {})["measured"] == "not measured"


def test_at_most_goals_latency_and_errors() -> None:
    p99 = verdict("predictor_p99", {"predictor": load(1, 14.1), "mlflow": load(1, 184.0)})
    assert (p99["met"], p99["ratio"], p99["measured"]) == (True, 0.077, "14.1 vs 184.0 ms")
    errors = verdict("gateway_errors", {"gateway": load(3_000, failed=3)})
    assert (errors["met"], errors["ratio"], errors["measured"]) == (False, None, "3")


def test_the_swap_is_served_within_two_poll_intervals_or_never() -> None:
    swap = {"failed": 0, "requests": 52_555, "all_new_answers_s": 2.37}
    assert verdict("swap_time", {"swap": swap})["met"] is True
    assert RECORDS["swap_time"].target == "≤ 10 s (2 x poll interval 5 s)"
    assert verdict("swap_errors", {"swap": swap})["measured"] == "0 of 52,555"
    never = verdict("swap_time", {"swap": swap | {"all_new_answers_s": None}})
    assert (never["met"], never["measured"]) == (False, "never within the wait")
    late = verdict("swap_time", {"swap": swap | {"all_new_answers_s": 10.5}})
    assert late["met"] is False


def test_the_split_batch_goal_takes_mlflows_split_figure_first_even_when_slower() -> None:
    figures = {
        "predictor-invocations-batch": load(1_141.2),
        "mlflow-batch-split": load(285.6),
        "mlflow-batch": load(309.2),
    }
    goal = verdict("invocations_split_batch", figures)
    assert goal["ratio"] == round(1_141.2 / 285.6, 3)
    assert "(" not in goal["measured"]  # no peer named: the figure is not a pick among peers
    del figures["mlflow-batch-split"]
    assert verdict("invocations_split_batch", figures)["ratio"] == round(1_141.2 / 309.2, 3)


def test_a_record_without_a_peer_holds_our_own_figure_to_its_limit() -> None:
    record = GoalRecord("k", "Gateway p99", "≤ 50 ms", 50, "gateway", fields=("p99_ms",),
                        measured="{a:.1f} ms", at_most=True)  # fmt: skip
    met = evaluate(record, {"gateway": load(1, 22.4)}, {})
    missed = evaluate(record, {"gateway": load(1, 50.1)}, {})
    assert (met["met"], met["measured"]) == (True, "22.4 ms")
    assert missed["met"] is False
