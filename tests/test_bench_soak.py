"""`make soak`'s must-holds, evaluated again from the figures its last run wrote."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench.common import ROOT
from bench.soak import Soak, Tally, checks

RESULTS = ROOT / "bench" / "soak-results.json"


@pytest.fixture
def soak() -> dict[str, Any]:
    return dict(json.loads(RESULTS.read_text())["soak"])


def test_the_checks_read_again_from_the_written_figures_are_the_written_checks() -> None:
    results = json.loads(RESULTS.read_text())
    assert checks(results["soak"]) == results["checks"]


def test_a_lost_job_a_failed_request_and_a_missing_log_line_each_fail_their_check(
    soak: dict[str, Any],
) -> None:
    assert all(check["met"] for check in checks(soak))
    broken = copy.deepcopy(soak)
    broken["jobs"][0]["lost"] = True
    broken["traffic"]["failed"] = 1
    broken["prediction_log"]["lines"] -= 1
    verdicts = {check["check"].split(" (")[0].split(":")[0]: check for check in checks(broken)}
    assert verdicts["Lost retrain jobs"]["met"] is False
    assert verdicts["Lost retrain jobs"]["measured"].startswith("1 of ")
    assert verdicts["Failed predictions"]["met"] is False
    assert verdicts["Prediction log"]["met"] is False
    assert verdicts["Anonymous flood"]["met"] is True


def test_a_run_without_jobs_or_hostile_phases_holds_nothing_it_could_not_see(
    soak: dict[str, Any],
) -> None:
    empty = copy.deepcopy(soak) | {"jobs": [], "hostile": {}}
    met = {check["check"].split(" (")[0]: check["met"] for check in checks(empty)}
    assert met["Lost retrain jobs"] is False
    assert met["Trickling uploads"] is False


class FakeStack:
    gateway_url, token = "http://127.0.0.1:1", "t"

    def stack_env(self) -> dict[str, str]:
        return {}


def test_a_move_is_served_once_every_clients_answers_name_its_version() -> None:
    soak = Soak(FakeStack(), 60)  # type: ignore[arg-type]
    soak.tallies = [Tally("one_row", 1), Tally("batch", 100)]
    soak.tallies[0].switches = [(0.0, "1"), (10.4, "2"), (31.0, "1")]
    soak.tallies[1].switches = [(0.0, "1"), (11.9, "2"), (30.2, "1")]
    for label, version, sent in (("to A's", "2", 10.0), ("back", "1", 30.0)):
        soak.moves.append({"label": label, "to_version": version, "requested_s": sent})
    soak.time_swaps(end_s=40.0)
    first, back = soak.moves
    assert (first["first_new_answer_after_s"], first["all_new_answers_after_s"]) == (0.4, 1.9)
    assert (back["first_new_answer_after_s"], back["all_new_answers_after_s"]) == (0.2, 1.0)


def test_the_traffic_counts_answers_rows_and_failures_per_kind() -> None:
    soak = Soak(FakeStack(), 60)  # type: ignore[arg-type]
    one, batch = Tally("one_row", 1, requests=5, ok=4), Tally("batch", 100, requests=2, ok=2)
    one.failures["HTTP 503"] = 1
    one.latencies_ms, batch.latencies_ms = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0]
    soak.tallies = [one, batch]
    traffic = soak.traffic(seconds=2.0)
    assert (traffic["requests"], traffic["answered_200"], traffic["rows_answered"]) == (7, 6, 204)
    assert traffic["failures"] == {"HTTP 503": 1}
    assert traffic["by_kind"]["batch"]["requests_per_s"] == 1.0
    assert traffic["by_kind"]["one_row"]["latency_ms"] == {"p50": 2.5, "p99": 3.97, "max": 4.0}


def test_memory_growth_peak_and_replaced_processes_per_service() -> None:
    soak = Soak(FakeStack(), 60)  # type: ignore[arg-type]

    def tree(rss: float, pss: float, pids: list[int]) -> dict[str, Any]:
        return {"rss_mib": rss, "pss_mib": pss, "pids": pids}

    start = {"t": 15.0, "predictor": tree(400.0, 300.0, [1, 2, 3]), "gateway": None}
    soak.memory_series = [{"t": 20.0, "predictor": tree(520.0, 390.0, [1, 2, 3])}]
    end = {"t": 80.0, "predictor": tree(500.0, 380.0, [1, 2, 4]), "gateway": None}
    soak.restarts["gateway"] = 1
    report = soak.memory_report(start, end)
    predictor, gateway = report["services"]["predictor"], report["services"]["gateway"]
    assert (predictor["rss_growth_mib"], predictor["rss_growth_pct"]) == (100.0, 25.0)
    assert (predictor["pss_growth_mib"], predictor["processes_replaced"]) == (80.0, 1)
    assert predictor["peak_rss_mib"] == 520.0
    assert gateway == {"start": None, "end": None, "peak_rss_mib": None, "program_restarts": 1}
    assert report["rss_mib_series"][0]["predictor"] == 520.0
    assert (report["start_s"], report["end_s"]) == (15.0, 80.0)
