"""The loads: request bodies in every server's shape, wrk runs, rounds that alternate the
servers, and the one table (LOADS) of what `make bench` and `make profile` send where.

wrk counts an answer with status 400 or more as a status error; none of the routes measured
redirects, so "not an error" means a 2xx answer. Rounds alternate the servers so that drift on
a shared machine hits all alike; a server's figure is the median over its rounds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sklearn.datasets import load_iris

from bench.common import MODEL_NAME, say
from iris_shared.schemas import FEATURE_NAMES

# The goals are stated for these loads; changing them changes what the goals mean.
CONNECTIONS, BATCH_CONNECTIONS, BATCH_ROWS = 32, 4, 1000
WRK_THREADS, WRK_TIMEOUT = 2, "10s"
FLOWER: dict[str, float] = dict(zip(FEATURE_NAMES, (5.1, 3.5, 1.4, 0.2), strict=True))
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records")
RESULT_PREFIX = "BENCH_WRK_RESULT "
JSON = {"Content-Type": "application/json"}


def iris_flowers(count: int) -> list[dict[str, float]]:
    """`count` real flowers, cycling through the 150 of the classic data set."""
    rows = load_iris().data.tolist()
    return [dict(zip(FEATURE_NAMES, map(float, rows[i % 150]), strict=True)) for i in range(count)]


def _matrix(flowers: list[dict[str, float]]) -> list[list[float]]:
    return [[flower[name] for name in FEATURE_NAMES] for flower in flowers]


def encoded(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def mlflow_body(flowers: list[dict[str, float]], shape: str) -> dict[str, Any]:
    # The model was logged with the training frame's columns: the same four names.
    if shape == "dataframe_split":
        return {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": _matrix(flowers)}}
    if shape == "dataframe_records":
        return {"dataframe_records": flowers}
    raise ValueError(f"unknown MLflow input shape {shape!r}")


def v2_json_body(flowers: list[dict[str, float]]) -> dict[str, Any]:
    """An Open Inference Protocol V2 request as MLServer's docs write one: one `[n, 4]` FP64
    tensor, data flat, no `outputs` (each server answers its default outputs)."""
    data = [value for row in _matrix(flowers) for value in row]
    tensor = {"name": "input-0", "shape": [len(flowers), 4], "datatype": "FP64", "data": data}
    return {"inputs": [tensor]}


def v2_binary_body(flowers: list[dict[str, float]]) -> tuple[bytes, int]:
    """A V2 request in the binary tensor extension, as tritonclient sends a float32 array with
    binary outputs: the JSON header, then the raw little-endian tensor; and the header's length
    (the Inference-Header-Content-Length value)."""
    tensor = np.asarray(_matrix(flowers), dtype="<f4")
    size = {"binary_data_size": tensor.nbytes}
    tensor_header = {"name": "input-0", "shape": list(tensor.shape), "datatype": "FP32"}
    inputs = [tensor_header | {"parameters": size}]
    header = encoded({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return header + tensor.tobytes(), len(header)


def bentoml_body(flowers: list[dict[str, float]]) -> dict[str, Any]:
    """BentoML's JSON API names the method's parameters: `input_series`, an `[n, 4]` array."""
    return {"input_series": _matrix(flowers)}


@dataclass(frozen=True)
class Body:
    """A request body on disk, as wrk sends it, with its content type and extra headers."""

    path: Path
    rows: int = 1
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def bench_bodies(folder: Path) -> dict[str, Body]:
    """Every body the loads send, by name: one row and BATCH_ROWS rows in each shape."""
    bodies: dict[str, Body] = {}
    folder.mkdir(exist_ok=True)

    def add(name: str, content: bytes | dict[str, Any], rows: int, *extra: Any) -> None:
        path = folder / (name if isinstance(content, bytes) else f"{name}.json")
        path.write_bytes(content if isinstance(content, bytes) else encoded(content))
        bodies[name] = Body(path, rows, *extra)

    for size, rows in (("one", [FLOWER]), ("batch", flowers := iris_flowers(BATCH_ROWS))):
        add(size, rows[0] if size == "one" else {"instances": rows}, len(rows))
        for shape in MLFLOW_FORMATS:
            add(f"mlflow-{size}-{shape}", mlflow_body(rows, shape), len(rows))
        add(f"v2-{size}", v2_json_body(rows), len(rows))
        add(f"bentoml-{size}", bentoml_body(rows), len(rows))
        binary, length = v2_binary_body(rows)
        header = (("Inference-Header-Content-Length", str(length)),)
        add(f"v2-binary-{size}", binary, len(rows), "application/octet-stream", header)
    # text/csv for /invocations: a header row with the column names, one flower a line.
    csv = "\n".join([",".join(FEATURE_NAMES), *(",".join(map(repr, r)) for r in _matrix(flowers))])
    add("csv-batch", (csv + "\n").encode(), BATCH_ROWS, "text/csv")
    return bodies


@dataclass(frozen=True)
class Load:
    """One request shape against one server, at its number of connections."""

    name: str
    url: str
    body: Body
    connections: int = CONNECTIONS
    request: str = ""  # for the report: what is sent


def parse_wrk_output(stdout: str, rows_per_request: int) -> dict[str, Any] | None:
    """The result line wrk_report.lua prints when wrk ends, with the rates of 2xx answers only
    (a server that answers errors fast must not look fast); None when there is no such line."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(RESULT_PREFIX)), None)
    if line is None:
        return None
    raw = json.loads(line.removeprefix(RESULT_PREFIX))
    ok_per_s = (raw["requests"] - raw["errors"]["status"]) / raw["duration_s"]
    return {
        **{k: raw[k] for k in ("requests", "duration_s", "errors", "latency_ms")},
        "rows_per_request": rows_per_request,
        "requests_per_s": round(ok_per_s, 1),
        "rows_per_s": round(ok_per_s * rows_per_request, 1),
        "failed": sum(raw["errors"].values()),
        "ok_per_s": ok_per_s,
    }


def wrk_version() -> str:
    """wrk's version; fails at once when wrk is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed; `make bench` installs it (bench/ensure_wrk.sh)")
    completed = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr or "unknown").splitlines()[0]
    return first_line.split("Copyright")[0].strip()


def run_wrk(load: Load, seconds: float) -> dict[str, Any]:
    command = [
        shutil.which("wrk") or "wrk",
        f"-t{min(WRK_THREADS, load.connections)}",
        f"-c{load.connections}",
    ]
    command += ["-s", str(Path(__file__).with_name("wrk_report.lua"))]
    command += [f"-d{max(1, round(seconds))}s", "--timeout", WRK_TIMEOUT, load.url]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "BENCH_WRK_METHOD": "POST",
        "BENCH_WRK_BODY_FILE": str(load.body.path),
        "BENCH_WRK_CONTENT_TYPE": load.body.content_type,
        "BENCH_WRK_HEADERS": "\n".join(f"{k}: {v}" for k, v in load.body.headers),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    result = parse_wrk_output(done.stdout, load.body.rows)
    if result is None:
        raise RuntimeError(
            f"wrk gave no result for {load.name} (exit {done.returncode}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return result


def describe(result: dict[str, Any]) -> str:
    return (
        f"{result['ok_per_s']:9.1f} req/s  p50 {result['latency_ms']['p50']:7.2f} ms  "
        f"p99 {result['latency_ms']['p99']:8.2f} ms  failed {result['failed']}"
    )


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One load's medians over its rounds; the errors summed, the max the largest."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    errors = {key: sum(r["errors"][key] for r in rounds) for key in rounds[0]["errors"]}
    return {
        "requests_per_s": median([r["ok_per_s"] for r in rounds]),
        "rows_per_s": median([r["ok_per_s"] * r["rows_per_request"] for r in rounds]),
        **{f"{p}_ms": median([r["latency_ms"][p] for r in rounds]) for p in ("p50", "p90", "p99")},
        "max_ms": max(r["latency_ms"]["max"] for r in rounds),
        "failed": sum(errors.values()),
        "errors": errors,
    }


def probe_mlflow_shapes(url: str, bodies: dict[str, Body], seconds: float) -> dict[str, str]:
    """The JSON shape `mlflow models serve` answers fastest, for one row and for batches, from
    a short probe of each."""
    shapes = {}
    kinds = (("one_row", "one", CONNECTIONS), ("batch", "batch", BATCH_CONNECTIONS))
    for kind, size, connections in kinds:
        speeds: dict[str, float] = {}
        for shape in MLFLOW_FORMATS:
            body = bodies[f"mlflow-{size}-{shape}"]
            load = Load(f"mlflow-{kind}-{shape}", f"{url}/invocations", body, connections)
            result = run_wrk(load, seconds)
            say(f"probe {load.name} as {shape}: {describe(result)}")
            # A shape the server refuses is no option, however fast the refusals come.
            speeds[shape] = result["ok_per_s"] if result["failed"] == 0 else -1.0
        shapes[kind] = max(speeds, key=lambda shape: speeds[shape])
        say(f"mlflow models serve: {kind} as {shapes[kind]}")
    return shapes


def run_rounds(loads: list[Load], rounds: int, seconds: int, warmup: int) -> dict[str, list[Any]]:
    for load in loads:
        run_wrk(load, warmup)
        say(f"warmed up {load.name}")
    results: dict[str, list[Any]] = {load.name: [] for load in loads}
    for number in range(1, rounds + 1):
        for load in loads:
            results[load.name].append(run_wrk(load, seconds))
            say(f"round {number}/{rounds} {load.name:<16} {describe(results[load.name][-1])}")
    return results


V2 = f"/v2/models/{MODEL_NAME}/infer"
V2_REQUEST = "MLServer: POST /v2/models/{{name}}/infer"
# Every load of `make bench`, in the order the rounds alternate them: name, server, path, body
# (of bench_bodies; a batch body's loads run at BATCH_CONNECTIONS), request for the report.
LOADS = (
    ("predictor", "predictor", "/predict", "one", "POST /predict"),
    ("mlflow", "mlflow", "/invocations", "mlflow-one-{one_row}",
     "mlflow models serve: POST /invocations ({one_row})"),
    ("mlserver", "mlserver", V2, "v2-one", f"{V2_REQUEST} (V2 JSON)"),
    ("bentoml", "bentoml", "/classify", "bentoml-one", "BentoML: POST /classify"),
    ("gateway", "gateway", "/predict", "one", "POST /predict (gateway)"),
    ("constant", "constant", "/predict", "one", "POST /predict (constant answer)"),
    ("predictor-v2", "predictor", V2, "v2-one", "POST /v2/.../infer"),
    ("predictor-v2-binary", "predictor", V2, "v2-binary-one",
     "POST /v2/.../infer (binary tensors)"),
    ("predictor-invocations", "predictor", "/invocations", "mlflow-one-{one_row}",
     "POST /invocations ({one_row})"),
    ("predictor-batch", "predictor", "/predict/batch", "batch", "POST /predict/batch"),
    ("mlflow-batch", "mlflow", "/invocations", "mlflow-batch-{batch}",
     "mlflow models serve: POST /invocations ({batch})"),
    # Only when mlflow answers another batch shape faster.
    ("mlflow-batch-split", "mlflow", "/invocations", "mlflow-batch-dataframe_split",
     "mlflow models serve: POST /invocations (dataframe_split)"),
    ("mlflow-batch-csv", "mlflow", "/invocations", "csv-batch",
     "mlflow models serve: POST /invocations (text/csv)"),
    ("mlserver-batch", "mlserver", V2, "v2-batch", f"{V2_REQUEST} (V2 JSON)"),
    # Measured if MLServer takes the binary extension; 1.7.1's REST server does not.
    ("mlserver-binary-batch", "mlserver", V2, "v2-binary-batch", f"{V2_REQUEST} (binary tensors)"),
    ("bentoml-batch", "bentoml", "/classify", "bentoml-batch", "BentoML: POST /classify"),
    ("predictor-v2-batch", "predictor", V2, "v2-batch", "POST /v2/.../infer (V2 JSON)"),
    ("predictor-v2-binary-batch", "predictor", V2, "v2-binary-batch",
     "POST /v2/.../infer (binary tensors)"),
    ("predictor-invocations-batch", "predictor", "/invocations", "mlflow-batch-dataframe_split",
     "POST /invocations (dataframe_split)"),
    ("predictor-invocations-csv-batch", "predictor", "/invocations", "csv-batch",
     "POST /invocations (text/csv)"),
)  # fmt: skip
# A refusal of these stops the run; any other load it refuses (a protocol this build does not
# serve, a peer that refuses the body) is reported as not measured.
REQUIRED = {"predictor", "mlflow", "gateway", "constant", "predictor-batch", "mlflow-batch"}
REQUIRED |= {"mlflow-batch-split", "mlflow-batch-csv"}


def bench_loads(
    urls: dict[str, str],
    bodies: dict[str, Body],
    shapes: dict[str, str],
    missing: dict[str, str],
    only: tuple[str, ...] = (),
) -> list[Load]:
    """The loads (all, or `only` these) on the servers that run (`urls` by server), each checked
    with one request (a refusal stops here with the server's own words); an optional load its
    server refuses goes to `missing` with why."""
    loads = []
    for name, server, path, body_name, request in LOADS:
        if server not in urls or (only and name not in only):
            continue
        if name == "mlflow-batch-split" and shapes["batch"] == "dataframe_split":
            continue
        body = bodies[body_name.format(**shapes)]
        batch = body.rows > 1
        request = request.format(**shapes) + (f", {body.rows:,} rows" if batch else "")
        connections = BATCH_CONNECTIONS if batch else CONNECTIONS
        load = Load(name, urls[server] + path, body, connections, request)
        headers = {"Content-Type": body.content_type, **dict(body.headers)}
        try:
            content = body.path.read_bytes()
            answer = httpx.post(load.url, content=content, headers=headers, timeout=30)
            if answer.status_code != 200:
                raise RuntimeError(f"{name} answered {answer.status_code}: {answer.text[:300]}")
        except (RuntimeError, httpx.HTTPError) as exc:
            if name in REQUIRED:
                raise
            missing[name] = str(exc).splitlines()[0][:300]
            say(f"not measured: {missing[name]}")
            continue
        loads.append(load)
    return loads
