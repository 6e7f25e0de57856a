"""What `make soak` reads back after its run: the prediction log, written by the predictor's own
writer, against the answers the clients saw; and the warnings and errors in the services' logs."""

from __future__ import annotations

import json
from pathlib import Path

from bench.measurements import read_prediction_log, service_log_findings
from iris_predictor.prediction_log import PredictionLog


def log_line(request_id: str, rows: int) -> bytes:
    return json.dumps({"request_id": request_id, "rows": rows}).encode() + b"\n"


def test_the_log_read_back_names_every_answer_missing_stray_or_logged_twice(
    tmp_path: Path,
) -> None:
    log = PredictionLog(tmp_path, max_bytes=64, backup_count=100)
    log.open()
    for request_id, rows in (("a", 1), ("b", 100), ("b", 100), ("stray", 1)):
        log.write([log_line(request_id, rows)])
    log.close()
    with (tmp_path / "predictions.jsonl").open("ab") as cut_short:
        cut_short.write(b'{"request_id": "half a lin\n')

    read = read_prediction_log(tmp_path, answered={"a", "b", "lost"})

    # Rotated files are read too: every line went into a file of its own.
    assert len(read["files"]) == 4
    assert (read["lines"], read["rows"], read["unreadable_lines"]) == (4, 202, 1)
    assert (read["answered_not_logged"], read["answered_not_logged_examples"]) == (1, ["lost"])
    assert (read["logged_not_answered"], read["logged_not_answered_examples"]) == (1, ["stray"])
    assert (read["logged_twice"], read["logged_twice_examples"]) == (1, ["b"])


def test_log_findings_count_each_level_and_word_the_first_errors(tmp_path: Path) -> None:
    error = {
        "time": "2026-12-07T22:00:00Z",
        "level": "ERROR",
        "logger": "iris_predictor.feedback",
        "message": "Unable to keep answers\nsecond line",
        "exc_info": "Traceback (most recent call last):\n  ...\nredis.ConnectionError: refused",
    }
    warning = {"level": "WARNING", "logger": "x", "message": "slow"}
    lines = [json.dumps(warning), json.dumps(error), "Traceback (most recent call last):"]
    (tmp_path / "predictor.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "gateway.log").write_text(json.dumps({"level": "INFO", "message": "up"}) + "\n")

    findings = service_log_findings([tmp_path])

    assert list(findings) == ["predictor.log"]
    assert findings["predictor.log"]["counts"] == {"WARNING": 1, "ERROR": 1, "Traceback": 1}
    assert findings["predictor.log"]["first_errors"] == [
        "2026-12-07T22:00:00Z | iris_predictor.feedback | Unable to keep answers"
        " | redis.ConnectionError: refused",
        "Traceback (most recent call last):",
    ]
