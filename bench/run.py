"""`make bench`: latency and memory of the serving path, measured side by side in one run.

Starts its own MLflow server, trains the baseline, and starts a predictor, Redis and a gateway
on free ports. Requests to the predictor and to the gateway are interleaved (one each, in
turn), so machine noise hits both alike and the ratios stay meaningful on a shared machine.
Writes bench/results.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.core import run_cli  # noqa: E402
from tests.support.gateway import start_gateway  # noqa: E402
from tests.support.predictor import start_predictor, wait_ready  # noqa: E402
from tests.support.processes import start_mlflow, start_redis  # noqa: E402

FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "400"))
BATCH_ROWS = int(os.environ.get("BENCH_BATCH_ROWS", "1000"))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 0.95), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def timed_post(client: httpx.Client, url: str, payload: object) -> float:
    started = time.perf_counter()
    response = client.post(url, json=payload)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
        work = Path(tmp)
        mlflow, uri = start_mlflow(work / "logs", work / "mlflow")
        redis, redis_url = start_redis(work / "logs")
        processes = [mlflow, redis]
        try:
            run_cli("train", tracking_uri=uri, env={"TRAINER_REPORTS_DIR": str(work / "reports")})
            predictor, predictor_url = start_predictor(work / "logs", uri)
            processes.append(predictor)
            wait_ready(predictor, predictor_url)
            gateway, gateway_url = start_gateway(
                work / "logs", predictor_url, redis_url, uri, "bench-token-not-secret"
            )
            processes.append(gateway)
            results = measure(predictor_url, gateway_url, predictor.pid, gateway.pid)
        finally:
            for process in reversed(processes):
                process.stop()
    results["meta"] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "rounds": ROUNDS,
        "batch_rows": BATCH_ROWS,
    }
    out = ROOT / "bench" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out.relative_to(ROOT)}")


def measure(predictor_url: str, gateway_url: str, predictor_pid: int, gateway_pid: int) -> dict:
    direct: list[float] = []
    proxied: list[float] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(50):  # warm-up: connection pools, lazy imports, first sklearn call
            timed_post(client, f"{predictor_url}/predict", FLOWER)
            timed_post(client, f"{gateway_url}/predict", FLOWER)
        for _ in range(ROUNDS):
            direct.append(timed_post(client, f"{predictor_url}/predict", FLOWER))
            proxied.append(timed_post(client, f"{gateway_url}/predict", FLOWER))

        rows = [FLOWER] * BATCH_ROWS
        batch_s = statistics.median(
            timed_post(client, f"{predictor_url}/predict/batch", {"instances": rows})
            for _ in range(5)
        )
        singles_s = sum(direct[:BATCH_ROWS]) * (BATCH_ROWS / min(BATCH_ROWS, len(direct)))

    direct_summary, proxied_summary = summary(direct), summary(proxied)

    def ratio(key: str) -> float:
        return round(proxied_summary[key] / direct_summary[key], 3)

    return {
        "predictor_predict": direct_summary,
        "gateway_predict": proxied_summary,
        "gateway_over_predictor_p50": ratio("p50_ms"),
        "gateway_over_predictor_p95": ratio("p95_ms"),
        "batch": {
            "rows": BATCH_ROWS,
            "batch_request_ms": round(batch_s * 1000, 2),
            "rows_per_s_batch": round(BATCH_ROWS / batch_s, 1),
            "rows_per_s_single_requests": round(BATCH_ROWS / singles_s, 1),
            "batch_speedup": round(singles_s / batch_s, 1),
        },
        "rss_mib": {"predictor": rss_mib(predictor_pid), "gateway": rss_mib(gateway_pid)},
    }


if __name__ == "__main__":
    main()
