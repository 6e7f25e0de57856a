"""`make profile`: py-spy's collapsed stacks summed per thread, frame and library."""

from __future__ import annotations

from pathlib import Path

from bench.profile import PROJECT, aggregate
from iris_devstack.processes import REPO_ROOT as ROOT

SITE = "/venv/lib/python3.11/site-packages"
PREDICT = f"predict ({ROOT}/services/predictor/iris_predictor/core.py:10)"
SEND = f"send ({SITE}/uvicorn/protocols/http/httptools_impl.py:500)"
SCORE = f"score ({SITE}/sklearn/linear_model/_base.py:30)"


def test_stacks_are_summed_per_thread_frame_and_library(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"thread (11): MainThread;run (<string>:1);{PREDICT};{SCORE} 6\n"
        f"thread (11): MainThread;run (<string>:1);{SEND} 3\n"
        f"thread (12): prediction-recorder;{PREDICT};{PREDICT} 1\n"
        "a line that is no stack\n"
    )
    profile = aggregate(raw)
    assert profile["samples"] == 10
    assert profile["threads"][0] == {"thread": "MainThread", "samples": 9, "share": 0.9}
    assert profile["self"][0]["frame"] == "score (sklearn/linear_model/_base.py)"
    assert profile["self"][0]["share"] == 0.6
    # Recursion counts a frame once per stack.
    project = profile["inclusive_project"][0]
    assert project["frame"] == "predict (services/predictor/iris_predictor/core.py)"
    assert project["samples"] == 7
    buckets = {row["bucket"]: row for row in profile["buckets"]}
    assert buckets["scikit-learn"]["share"] == 0.6
    assert buckets["uvicorn/httptools"]["self_share"] == 0.3
    assert buckets[PROJECT]["share"] == 0.7
    assert "<string>" not in buckets  # multiprocessing's bootstrap under every stack
