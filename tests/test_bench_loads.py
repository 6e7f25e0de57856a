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
from bench.config import BATCH_ROWS
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
    assert result.requests == 1529
    assert result.latency_ms["p99"] == pytest.approx(10.963)
    assert result.failed == 9
    assert result.ok_requests_per_s == pytest.approx((1529 - 9) / 1.099593)
    assert result.ok_rows_per_s == pytest.approx(result.ok_requests_per_s * 1000)
    assert result.as_dict()["requests_per_s"] == round((1529 - 9) / 1.099593, 1)


def test_wrk_output_without_the_result_line_reads_as_none() -> None:
    assert loads.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused", 1) is None


def test_medians_are_taken_over_rounds_and_errors_summed() -> None:
    def round_(requests: int, p99: float, status: int) -> loads.WrkResult:
        errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": status}
        latency = {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "max": p99 * 2}
        return loads.WrkResult(requests, 1.0, errors, latency, 1)

    summary = loads.Summary.of([round_(100, 9.0, 0), round_(300, 1.0, 2), round_(200, 5.0, 1)])
    assert summary.requests_per_s == 199.0  # the median of 100, 298 and 199 answered
    assert summary.p99_ms == 5.0
    assert summary.max_ms == 18.0
    assert summary.failed == 3


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
    body = loads.Body.write(tmp_path, "body", {"a": 1}, 3)
    answered = loads.run_wrk(
        loads.Target(
            "ok",
            server,
            loads.Body(body.path, 3, headers=(("Inference-Header-Content-Length", "7"),)),
        ),
        1,
        2,
    )
    refused = loads.run_wrk(loads.Target("refused", server, body), 1, 2)
    assert answered.requests > 0
    assert answered.failed == 0
    assert answered.ok_rows_per_s == pytest.approx(answered.ok_requests_per_s * 3)
    assert refused.errors["status"] == refused.requests > 0
    assert refused.ok_requests_per_s == 0
