"""The loads: request bodies in every server's shape, wrk runs, rounds that alternate the
servers, and the table of what `make bench` sends to which server.

wrk counts an answer with status 400 or more as a status error; none of the routes measured
redirects, so "not an error" means a 2xx answer. Rounds alternate the servers so that drift on a
shared machine hits all alike; a server's figure is the median over its rounds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sklearn.datasets import load_iris

from bench.config import (
    BATCH_CONNECTIONS,
    BATCH_ROWS,
    CONNECTIONS,
    MODEL_NAME,
    WRK_THREADS,
    WRK_TIMEOUT,
    BenchSettings,
)
from bench.console import say
from iris_shared.schemas import FEATURE_NAMES

# --- bodies -----------------------------------------------------------------------------------

FLOWER: dict[str, float] = dict(zip(FEATURE_NAMES, (5.1, 3.5, 1.4, 0.2), strict=True))
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records")


def iris_flowers(count: int) -> list[dict[str, float]]:
    """`count` real flowers, cycling through the 150 of the classic data set."""
    rows = load_iris().data.tolist()
    return [
        dict(zip(FEATURE_NAMES, map(float, rows[i % len(rows)]), strict=True)) for i in range(count)
    ]


def _matrix(flowers: list[dict[str, float]]) -> list[list[float]]:
    return [[flower[name] for name in FEATURE_NAMES] for flower in flowers]


def predictor_batch(flowers: list[dict[str, float]]) -> dict[str, Any]:
    return {"instances": flowers}


def mlflow_body(flowers: list[dict[str, float]], shape: str) -> dict[str, Any]:
    # The model was logged with the training frame's columns: the same four names.
    if shape == "dataframe_split":
        return {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": _matrix(flowers)}}
    if shape == "dataframe_records":
        return {"dataframe_records": flowers}
    raise ValueError(f"unknown MLflow input shape {shape!r}")


def mlflow_csv(flowers: list[dict[str, float]]) -> str:
    """`text/csv` for /invocations: a header row with the column names, one flower a line."""
    lines = [",".join(FEATURE_NAMES), *(",".join(map(repr, row)) for row in _matrix(flowers))]
    return "\n".join(lines) + "\n"


def v2_json_body(flowers: list[dict[str, float]]) -> dict[str, Any]:
    """An Open Inference Protocol V2 request as MLServer's docs write one: one `[n, 4]` FP64
    tensor, data flat, no `outputs` (each server answers its default outputs)."""
    data = [value for row in _matrix(flowers) for value in row]
    tensor = {"name": "input-0", "shape": [len(flowers), 4], "datatype": "FP64", "data": data}
    return {"inputs": [tensor]}


def v2_binary_body(flowers: list[dict[str, float]]) -> tuple[bytes, int]:
    """A V2 request in the binary tensor extension, as tritonclient sends one for a float32
    array with binary outputs: the JSON header, then the raw little-endian tensor. Returns the
    body and the header's length (the Inference-Header-Content-Length value)."""
    tensor = np.asarray(_matrix(flowers), dtype="<f4")
    size = {"binary_data_size": tensor.nbytes}
    inputs = [
        {"name": "input-0", "shape": list(tensor.shape), "datatype": "FP32", "parameters": size}
    ]
    header = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + tensor.tobytes(), len(encoded)


def bentoml_body(flowers: list[dict[str, float]]) -> dict[str, Any]:
    """BentoML's JSON API names the method's parameters: `input_series`, an `[n, 4]` array."""
    return {"input_series": _matrix(flowers)}


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Body:
    """A request body on disk, as wrk sends it, with its content type and extra headers."""

    path: Path
    rows: int
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def write(
        cls, folder: Path, name: str, content: bytes | dict[str, Any], rows: int, *extra: Any
    ) -> Body:
        """`content` in `folder`: a dict as `name`.json, bytes as `name` (with `extra`: the
        content type and headers)."""
        path = folder / (name if isinstance(content, bytes) else f"{name}.json")
        path.write_bytes(content if isinstance(content, bytes) else encoded(content))
        return cls(path, rows, *extra)


def bench_bodies(folder: Path) -> dict[str, Body]:
    """Every body `make bench` sends, by name: one row and BATCH_ROWS rows in each shape."""
    flowers = iris_flowers(BATCH_ROWS)
    bodies: dict[str, Body] = {}
    for size, rows in (("one", [FLOWER]), ("batch", flowers)):
        native = rows[0] if size == "one" else predictor_batch(rows)
        bodies[size] = Body.write(folder, size, native, len(rows))
        for shape in MLFLOW_FORMATS:
            name = f"mlflow-{size}-{shape}"
            bodies[name] = Body.write(folder, name, mlflow_body(rows, shape), len(rows))
        bodies[f"v2-{size}"] = Body.write(folder, f"v2-{size}", v2_json_body(rows), len(rows))
        binary, header = v2_binary_body(rows)
        header_length = (("Inference-Header-Content-Length", str(header)),)
        name, octets = f"v2-binary-{size}", "application/octet-stream"
        bodies[name] = Body.write(folder, f"{name}.bin", binary, len(rows), octets, header_length)
        bodies[f"bentoml-{size}"] = Body.write(
            folder, f"bentoml-{size}", bentoml_body(rows), len(rows)
        )
    csv = mlflow_csv(flowers).encode()
    bodies["csv-batch"] = Body.write(folder, "batch.csv", csv, BATCH_ROWS, "text/csv")
    return bodies


# --- wrk --------------------------------------------------------------------------------------

LUA_SCRIPT = Path(__file__).with_name("wrk_report.lua")
RESULT_PREFIX = "BENCH_WRK_RESULT "


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """One request shape against one server: what a round of load sends."""

    name: str
    url: str
    body: Body | None

    @property
    def rows_per_request(self) -> int:
        return self.body.rows if self.body else 1

    def request_headers(self) -> dict[str, str]:
        """The headers every request of this target carries, as wrk sends them."""
        if self.body is None:
            return {}
        return {"Content-Type": self.body.content_type, **dict(self.body.headers)}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_ms: dict[str, float]
    rows_per_request: int

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def ok_requests_per_s(self) -> float:
        # Only 2xx answers count: a server that answers errors fast must not look fast.
        return (self.requests - self.errors["status"]) / self.duration_s

    @property
    def ok_rows_per_s(self) -> float:
        return self.ok_requests_per_s * self.rows_per_request

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_s": round(self.ok_requests_per_s, 1),
            "rows_per_s": round(self.ok_rows_per_s, 1),
            "failed": self.failed,
        }


def parse_wrk_output(stdout: str, rows_per_request: int) -> WrkResult | None:
    """The result line wrk_report.lua prints when wrk ends; None when there is none."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line.removeprefix(RESULT_PREFIX))
            return WrkResult(
                requests=int(raw["requests"]),
                duration_s=float(raw["duration_s"]),
                errors={k: int(v) for k, v in raw["errors"].items()},
                latency_ms={k: float(v) for k, v in raw["latency_ms"].items()},
                rows_per_request=rows_per_request,
            )
    return None


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed; `make bench` installs it (bench/ensure_wrk.sh)")
    return found


def wrk_version() -> str:
    completed = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).splitlines()[:1]
    return first_line[0].split("Copyright")[0].strip() if first_line else "unknown"


def run_wrk(target: Target, seconds: float, connections: int) -> WrkResult:
    command = [wrk_binary(), f"-t{min(WRK_THREADS, connections)}", f"-c{connections}"]
    command += [f"-d{max(1, round(seconds))}s", "--timeout", WRK_TIMEOUT, "-s", str(LUA_SCRIPT)]
    body = target.body
    env = {
        "PATH": "/usr/bin:/bin",
        "BENCH_WRK_METHOD": "POST" if body else "GET",
        "BENCH_WRK_BODY_FILE": str(body.path) if body else "",
        "BENCH_WRK_CONTENT_TYPE": body.content_type if body else "",
        "BENCH_WRK_HEADERS": "\n".join(f"{k}: {v}" for k, v in body.headers) if body else "",
    }
    completed = subprocess.run(
        [*command, target.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    result = parse_wrk_output(completed.stdout, target.rows_per_request)
    if result is None:
        raise WrkError(
            f"wrk gave no result for {target.name} (exit {completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    return result


# --- rounds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    target: Target
    connections: int
    request: str  # for the report: what is sent


@dataclass(frozen=True)
class Summary:
    """One target's medians over its rounds."""

    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failed: int
    errors: dict[str, int]

    @classmethod
    def of(cls, rounds: list[WrkResult]) -> Summary:
        def median(values: list[float]) -> float:
            return round(statistics.median(values), 3)

        errors = {key: sum(r.errors[key] for r in rounds) for key in rounds[0].errors}
        return cls(
            requests_per_s=median([r.ok_requests_per_s for r in rounds]),
            rows_per_s=median([r.ok_rows_per_s for r in rounds]),
            p50_ms=median([r.latency_ms["p50"] for r in rounds]),
            p90_ms=median([r.latency_ms["p90"] for r in rounds]),
            p99_ms=median([r.latency_ms["p99"] for r in rounds]),
            max_ms=max(r.latency_ms["max"] for r in rounds),
            failed=sum(errors.values()),
            errors=errors,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(result: WrkResult) -> str:
    return (
        f"{result.ok_requests_per_s:9.1f} req/s  p50 {result.latency_ms['p50']:7.2f} ms  "
        f"p99 {result.latency_ms['p99']:8.2f} ms  failed {result.failed}"
    )


def pick_mlflow_shape(candidates: dict[str, Target], connections: int, seconds: float) -> str:
    """The input shape `mlflow models serve` answers fastest, from a short probe of each."""
    speeds: dict[str, float] = {}
    for shape, target in candidates.items():
        result = run_wrk(target, seconds, connections)
        say(f"probe {target.name} as {shape}: {describe(result)}")
        # A shape the server refuses is no option, however fast the refusals come.
        speeds[shape] = result.ok_requests_per_s if result.failed == 0 else -1.0
    return max(speeds, key=lambda shape: speeds[shape])


def run_rounds(loads: list[Load], settings: BenchSettings) -> dict[str, list[WrkResult]]:
    for load in loads:
        run_wrk(load.target, settings.warmup_seconds, load.connections)
        say(f"warmed up {load.target.name}")
    results: dict[str, list[WrkResult]] = {load.target.name: [] for load in loads}
    for number in range(1, settings.rounds + 1):
        for load in loads:
            result = run_wrk(load.target, settings.round_seconds, load.connections)
            results[load.target.name].append(result)
            say(f"round {number}/{settings.rounds} {load.target.name:<16} {describe(result)}")
    return results


def check_answers(target: Target) -> None:
    """One request before any load: a refusal stops here with the server's own words."""
    assert target.body is not None
    response = httpx.post(
        target.url,
        content=target.body.path.read_bytes(),
        headers=target.request_headers(),
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{target.name} answered {response.status_code}: {response.text[:300]}")


# --- what make bench sends where -----------------------------------------------------------------

V2_INFER = f"/v2/models/{MODEL_NAME}/infer"


@dataclass(frozen=True)
class LoadRow:
    """One load of `make bench`: a server's path with one of bench_bodies(). An optional load is
    measured only when its server answers the body (a protocol this build does not serve, a
    peer that refuses it); a required one that is refused stops the run."""

    name: str
    server: str
    path: str
    body: str
    request: str
    optional: bool = False


_ONE_ROW = (
    LoadRow("predictor", "predictor", "/predict", "one", "POST /predict"),
    LoadRow("mlflow", "mlflow", "/invocations", "mlflow-one-{one_shape}",
            "mlflow models serve: POST /invocations ({one_shape})"),
    LoadRow("mlserver", "mlserver", V2_INFER, "v2-one",
            "MLServer: POST /v2/models/{{name}}/infer (V2 JSON)", optional=True),
    LoadRow("bentoml", "bentoml", "/classify", "bentoml-one", "BentoML: POST /classify",
            optional=True),
    LoadRow("gateway", "gateway", "/predict", "one", "POST /predict (gateway)"),
    LoadRow("constant", "constant", "/predict", "one", "POST /predict (constant answer)"),
    LoadRow("predictor-v2", "predictor", V2_INFER, "v2-one", "POST /v2/.../infer", optional=True),
    LoadRow("predictor-v2-binary", "predictor", V2_INFER, "v2-binary-one",
            "POST /v2/.../infer (binary tensors)", optional=True),
    LoadRow("predictor-invocations", "predictor", "/invocations", "mlflow-one-{one_shape}",
            "POST /invocations ({one_shape})", optional=True),
)  # fmt: skip
# Batches: BATCH_ROWS rows at BATCH_CONNECTIONS; the report adds ", 1,000 rows" to each request.
_BATCHES = (
    LoadRow("predictor-batch", "predictor", "/predict/batch", "batch", "POST /predict/batch"),
    LoadRow("mlflow-batch", "mlflow", "/invocations", "mlflow-batch-{batch_shape}",
            "mlflow models serve: POST /invocations ({batch_shape})"),
    # Only when mlflow answers another batch shape faster (a condition in bench_loads).
    LoadRow("mlflow-batch-split", "mlflow", "/invocations", "mlflow-batch-dataframe_split",
            "mlflow models serve: POST /invocations (dataframe_split)"),
    LoadRow("mlflow-batch-csv", "mlflow", "/invocations", "csv-batch",
            "mlflow models serve: POST /invocations (text/csv)"),
    LoadRow("mlserver-batch", "mlserver", V2_INFER, "v2-batch",
            "MLServer: POST /v2/models/{{name}}/infer (V2 JSON)", optional=True),
    # Measured if MLServer takes the binary extension; 1.7.1's REST server does not.
    LoadRow("mlserver-binary-batch", "mlserver", V2_INFER, "v2-binary-batch",
            "MLServer: POST /v2/models/{{name}}/infer (binary tensors)", optional=True),
    LoadRow("bentoml-batch", "bentoml", "/classify", "bentoml-batch", "BentoML: POST /classify",
            optional=True),
    LoadRow("predictor-v2-batch", "predictor", V2_INFER, "v2-batch",
            "POST /v2/.../infer (V2 JSON)", optional=True),
    LoadRow("predictor-v2-binary-batch", "predictor", V2_INFER, "v2-binary-batch",
            "POST /v2/.../infer (binary tensors)", optional=True),
    LoadRow("predictor-invocations-batch", "predictor", "/invocations",
            "mlflow-batch-dataframe_split", "POST /invocations (dataframe_split)", optional=True),
    LoadRow("predictor-invocations-csv-batch", "predictor", "/invocations", "csv-batch",
            "POST /invocations (text/csv)", optional=True),
)  # fmt: skip


def bench_loads(
    urls: dict[str, str], bodies: dict[str, Body], shapes: dict[str, str], missing: dict[str, str]
) -> list[Load]:
    """The loads of `make bench` on the servers that run (`urls` by server), in the order the
    rounds alternate them; an optional load its server refuses goes to `missing` with why."""
    names = {"one_shape": shapes["one_row"], "batch_shape": shapes["batch"]}
    loads = []
    for rows, connections, table in (
        (1, CONNECTIONS, _ONE_ROW),
        (BATCH_ROWS, BATCH_CONNECTIONS, _BATCHES),
    ):
        for row in table:
            if row.server not in urls or (
                row.name == "mlflow-batch-split" and shapes["batch"] == "dataframe_split"
            ):
                continue
            request = row.request.format(**names) + (f", {rows:,} rows" if rows > 1 else "")
            target = Target(row.name, urls[row.server] + row.path, bodies[row.body.format(**names)])
            try:
                check_answers(target)
            except (RuntimeError, httpx.HTTPError) as exc:
                if not row.optional:
                    raise
                missing[row.name] = str(exc).splitlines()[0][:300]
                say(f"not measured: {missing[row.name]}")
                continue
            loads.append(Load(target, connections, request))
    return loads


# --- client threads (make soak) ------------------------------------------------------------------

REQUEST_TIMEOUT_S = 30.0
# A client that just failed waits a little, so an outage is counted, not hammered.
FAILURE_PAUSE_S = 0.05
FAILURE_SAMPLES = 20


@dataclass(frozen=True)
class RequestKind:
    name: str
    path: str
    body: bytes
    rows: int


@dataclass
class ClientTally:
    """What one client thread saw; read only once the thread has ended."""

    kind: str
    requests: int = 0
    ok: int = 0
    ok_rows: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    failure_samples: list[dict[str, Any]] = field(default_factory=list)
    answered_ids: list[str] = field(default_factory=list)
    # Answers whose request_id is not the X-Request-ID this client sent.
    other_ids: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    # (time, version) each time the answers of this client changed model version.
    switches: list[tuple[float, str]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    crashed: str | None = None

    def fail(self, t: float, what: str, request_id: str, detail: str) -> None:
        self.failures[what] += 1
        if len(self.failure_samples) < FAILURE_SAMPLES:
            sample = {"t": t, "kind": self.kind, "failure": what, "request_id": request_id}
            self.failure_samples.append(sample | {"detail": detail[:300]})


def read_answer(response: httpx.Response, kind: RequestKind) -> tuple[str, str]:
    """The model version and request id of a 200 answer; ValueError when it is not one."""
    answer = response.json()
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    if kind.rows == 1 and not isinstance(answer.get("predicted_species"), str):
        raise ValueError("no predicted_species")
    if kind.rows > 1 and len(answer.get("predictions") or []) != kind.rows:
        raise ValueError(f"not {kind.rows} predictions")
    if "model_version" not in answer or "request_id" not in answer:
        raise ValueError("no model_version or request_id")
    return str(answer["model_version"]), str(answer["request_id"])


class Traffic:
    """Client threads that each send one request at a time until stopped, and count every
    outcome: 200, any other status, or a transport error. Python clients rather than wrk, which
    drops the requests in flight when it stops and so cannot be matched with a log."""

    def __init__(
        self, url: str, kinds: list[tuple[RequestKind, int]], clock: Callable[[], float]
    ) -> None:
        self.url, self.kinds, self.clock = url, kinds, clock
        self.stopping = threading.Event()
        self.tallies: list[ClientTally] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for kind, clients in self.kinds:
            for number in range(clients):
                tally = ClientTally(kind.name)
                thread = threading.Thread(
                    target=self._drive, args=(kind, number, tally), name=f"soak-{kind.name}"
                )
                self.tallies.append(tally)
                self.threads.append(thread)
                thread.start()

    def stop(self) -> None:
        """Let every client finish the request it is in, so each one sent is counted."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(REQUEST_TIMEOUT_S + 30)

    def _drive(self, kind: RequestKind, number: int, tally: ClientTally) -> None:
        try:
            self._send_until_stopped(kind, number, tally)
        except Exception as exc:
            # Counts from here on would be missing: the run is reported as failed.
            tally.crashed = f"{type(exc).__name__}: {exc}"
            say(f"client {kind.name}-{number} crashed: {tally.crashed}")

    def _send_until_stopped(self, kind: RequestKind, number: int, tally: ClientTally) -> None:
        headers = {"Content-Type": "application/json"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stopping.is_set():
                tally.requests += 1
                request_id = f"soak-{kind.name}-{number}-{tally.requests}"
                sent = time.perf_counter()
                try:
                    response = client.post(
                        kind.path, content=kind.body, headers={"X-Request-ID": request_id}
                    )
                except httpx.HTTPError as exc:
                    tally.fail(self.clock(), type(exc).__name__, request_id, str(exc))
                    time.sleep(FAILURE_PAUSE_S)
                    continue
                latency_ms = (time.perf_counter() - sent) * 1000
                if response.status_code != 200:
                    tally.fail(
                        self.clock(), f"HTTP {response.status_code}", request_id, response.text
                    )
                    time.sleep(FAILURE_PAUSE_S)
                    continue
                try:
                    version, answered_id = read_answer(response, kind)
                except ValueError as exc:
                    tally.fail(self.clock(), "unreadable 200", request_id, str(exc))
                    continue
                tally.ok += 1
                tally.ok_rows += kind.rows
                tally.latencies_ms.append(latency_ms)
                tally.answered_ids.append(answered_id)
                tally.other_ids += answered_id != request_id
                tally.versions[version] += 1
                if not tally.switches or tally.switches[-1][1] != version:
                    tally.switches.append((self.clock(), version))

    def summary(self, seconds: float) -> dict[str, Any]:
        def counts(tallies: list[ClientTally]) -> dict[str, Any]:
            failures: Counter[str] = sum((t.failures for t in tallies), Counter())
            return {
                "requests": sum(t.requests for t in tallies),
                "answered_200": sum(t.ok for t in tallies),
                "rows_answered": sum(t.ok_rows for t in tallies),
                "failed": sum(failures.values()),
                "failures": dict(failures),
            }

        by_kind: dict[str, Any] = {}
        for kind, clients in self.kinds:
            tallies = [t for t in self.tallies if t.kind == kind.name]
            latencies = np.array([ms for t in tallies for ms in t.latencies_ms])
            percentiles = (("p50", 50), ("p99", 99), ("max", 100))
            by_kind[kind.name] = {
                "request": f"POST {kind.path}",
                "rows_per_request": kind.rows,
                "clients": clients,
                **counts(tallies),
                "requests_per_s": round(sum(t.ok for t in tallies) / seconds, 1),
                "latency_ms": {
                    name: round(float(np.percentile(latencies, q)), 2) if latencies.size else None
                    for name, q in percentiles
                },
            }
        samples = sorted((s for t in self.tallies for s in t.failure_samples), key=lambda s: s["t"])
        return {
            "seconds": round(seconds, 1),
            "by_kind": by_kind,
            **counts(self.tallies),
            "failure_samples": samples[:FAILURE_SAMPLES],
            "answers_per_model_version": dict(sum((t.versions for t in self.tallies), Counter())),
            "answers_with_another_request_id": sum(t.other_ids for t in self.tallies),
            "crashed_clients": [t.crashed for t in self.tallies if t.crashed],
        }

    def answered_ids(self) -> set[str]:
        return {request_id for t in self.tallies for request_id in t.answered_ids}
