"""`make soak`'s must-holds, evaluated again from the figures its last run wrote."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from bench.common import ROOT
from bench.soak import checks

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
