"""`make bench`'s loads: wrk's report read back, and the request bodies checked with the
predictor's own parsers (the same code that answers them under load)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bench import loads
from bench.loads import BATCH_ROWS
from iris_predictor.inputs import batch_of_flowers, one_flower
from iris_predictor.routes.mlflow_scoring import rows_from_csv, rows_from_json
from iris_shared.schemas import FEATURE_NAMES

# What wrk 4.1.0 printed, with bench/wrk_report.lua, against `python -m http.server`.
WRK_STDOUT = """Running 1s test @ http://127.0.0.1:18977/
  1 threads and 2 connections
  1529 requests in 1.10s, 715.23KB read
Requests/sec:   1390.51
BENCH_WRK_RESULT {"requests": 1529, "duration_s": 1.099593, "requests_per_s": 1390.514, \
"bytes": 732391, "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 9}, \
"latency_ms": {"p50": 0.828, "p90": 4.878, "p99": 10.963, "max": 19.436, "mean": 1.922}}
"""


def test_wrk_output_is_read_from_the_lua_scripts_line_and_only_2xx_answers_count() -> None:
    result = loads.parse_wrk_output(WRK_STDOUT, rows_per_request=1000)
    assert result is not None
    assert result["requests"] == 1529
    assert result["latency_ms"]["p99"] == pytest.approx(10.963)
    assert result["failed"] == 9
    assert result["ok_per_s"] == pytest.approx((1529 - 9) / 1.099593)
    assert result["requests_per_s"] == round((1529 - 9) / 1.099593, 1)
    assert result["rows_per_s"] == round(result["ok_per_s"] * 1000, 1)


def test_wrk_output_without_the_result_line_reads_as_none() -> None:
    assert loads.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused", 1) is None


def test_medians_are_taken_over_rounds_and_errors_summed() -> None:
    def round_(requests: int, p99: float, status: int) -> dict:
        errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": status}
        latency = {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "max": p99 * 2}
        line = {"requests": requests, "duration_s": 1.0, "errors": errors, "latency_ms": latency}
        result = loads.parse_wrk_output(loads.RESULT_PREFIX + json.dumps(line), 10)
        assert result is not None
        return result

    summary = loads.medians([round_(100, 9.0, 0), round_(300, 1.0, 2), round_(200, 5.0, 1)])
    assert summary["requests_per_s"] == 199.0  # the median of 100, 298 and 199 answered
    assert summary["rows_per_s"] == 1990.0
    assert summary["p99_ms"] == 5.0
    assert summary["max_ms"] == 18.0
    assert summary["failed"] == 3


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, loads.Body]:
    return loads.bench_bodies(tmp_path_factory.mktemp("bodies"))


def test_the_native_bodies_are_what_the_predictor_parses(bodies: dict[str, loads.Body]) -> None:
    one = one_flower(bodies["one"].path.read_bytes())
    np.testing.assert_array_equal(one, [[loads.FLOWER[name] for name in FEATURE_NAMES]])
    batch = batch_of_flowers(bodies["batch"].path.read_bytes(), max_rows=BATCH_ROWS)
    assert batch.shape == (BATCH_ROWS, 4)
    assert bodies["batch"].rows == BATCH_ROWS


def test_every_mlflow_body_holds_the_same_rows(bodies: dict[str, loads.Body]) -> None:
    native = batch_of_flowers(bodies["batch"].path.read_bytes(), max_rows=BATCH_ROWS)
    for shape in loads.MLFLOW_FORMATS:
        rows = rows_from_json(bodies[f"mlflow-batch-{shape}"].path.read_bytes(), BATCH_ROWS)
        np.testing.assert_array_equal(rows, native)
    csv = bodies["csv-batch"]
    assert csv.content_type == "text/csv"
    np.testing.assert_array_equal(rows_from_csv(csv.path.read_bytes(), BATCH_ROWS), native)


def test_v2_bodies_are_one_fp64_tensor_of_n_by_4(bodies: dict[str, loads.Body]) -> None:
    tensor = json.loads(bodies["v2-batch"].path.read_bytes())["inputs"][0]
    assert tensor["shape"] == [BATCH_ROWS, 4]
    assert tensor["datatype"] == "FP64"
    assert len(tensor["data"]) == 4 * BATCH_ROWS
    binary = bodies["v2-binary-one"]
    header = dict(binary.headers)["Inference-Header-Content-Length"]
    assert json.loads(binary.path.read_bytes()[: int(header)])["inputs"][0]["shape"] == [1, 4]


def test_an_unknown_mlflow_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown MLflow input shape"):
        loads.mlflow_body([loads.FLOWER], "tensor")


class _Answer(BaseHTTPRequestHandler):
    """200 to a POST carrying the expected header, 400 otherwise."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.headers.get("Inference-Header-Content-Length") == "7"
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.integration
def test_real_wrk_sends_the_body_and_headers_and_counts_refusals(
    server: str, tmp_path: Path
) -> None:
    (tmp_path / "body.json").write_text('{"a": 1}')
    body = loads.Body(tmp_path / "body.json", 3)
    header = (("Inference-Header-Content-Length", "7"),)
    answered = loads.run_wrk(
        loads.Load("ok", server, loads.Body(body.path, 3, headers=header), 2), 1
    )
    refused = loads.run_wrk(loads.Load("refused", server, body, 2), 1)
    assert answered["requests"] > 0
    assert answered["failed"] == 0
    assert answered["rows_per_s"] == pytest.approx(answered["requests_per_s"] * 3, rel=0.01)
    assert refused["errors"]["status"] == refused["requests"] > 0
    assert refused["requests_per_s"] == 0


def test_an_optional_load_its_server_refuses_is_not_measured_and_a_required_one_stops(
    server: str, tmp_path: Path
) -> None:
    """The local server refuses every body without the binary header: the peers' loads are
    reported as not measured, with the server's answer; the predictor's own load stops the run."""
    bodies = loads.bench_bodies(tmp_path)
    missing: dict[str, str] = {}
    shapes = {"one_row": "dataframe_records", "batch": "dataframe_split"}
    assert loads.bench_loads({"mlserver": server}, bodies, shapes, missing) == []
    assert missing == {
        "mlserver": "mlserver answered 400: {}",
        "mlserver-batch": "mlserver-batch answered 400: {}",
        "mlserver-binary-batch": "mlserver-binary-batch answered 400: {}",
    }
    with pytest.raises(RuntimeError, match="predictor answered 400"):
        loads.bench_loads({"predictor": server}, bodies, shapes, {})
