"""`make soak`: minutes of traffic through the gateway while retrains run, the `production`
alias moves, Redis restarts, uploads trickle and anonymous batches flood, all at once, on a
second local stack with a durable Redis (append-only file, as supervisord runs it). Client
threads send one request at a time each, every outcome counted (Python clients, not wrk, which
drops the requests in flight when it stops); the answers' `model_version` shows when each move
was served. Then the jobs get a grace period, the predictor stops gracefully and its
prediction log is read back. The exit code is 1 when a must-hold (`checks`) fails; memory
growth, the answers kept for feedback and the services' warnings are reported, not judged.

    python -m bench.soak [--minutes 5] [--output bench/soak-results.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench.common import MODEL_NAME, ROOT, SERVICES, Session, poll_interval_s, say
from bench.jobs import RetrainJobs
from bench.loads import FLOWER, JSON, encoded, iris_flowers
from bench.measurements import log_documents, read_prediction_log, service_log_findings, tree_memory
from bench.phases import (
    FLOOD_BATCH_ROWS,
    TRICKLING_CONNECTIONS,
    anonymous_flood,
    stop_predictor,
    trickling_uploads,
)
from bench.report import write
from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import alive
from iris_shared.feedback import FeedbackKeys
from iris_shared.jobs import DEFAULT_JOBS_NAMESPACE

# Each kind of request: name, path, rows, client threads.
KINDS = (("one_row", "/predict", 1, 4), ("batch", "/predict/batch", 100, 2))
WARMUP_S, JOB_GRACE_S, REQUEST_TIMEOUT_S = 15.0, 300.0, 30.0
# When, as a share of the run, each step starts (the first promotion waits for the first job).
SCHEDULE = {"A": 0.05, "slow_clients": 0.2, "redis": 0.45, "flood": 0.55, "D": 0.65, "back": 0.75}
# A move needs this long before the run ends, or its swap could not be seen.
MOVE_MARGIN_S = 15.0
# Small enough for the flood to reach it: the soak shows the budget holding.
STORE_MAX_BYTES = 8 * 1024 * 1024


@dataclass
class Tally:
    """What one client thread saw; read only once the thread has ended."""

    kind: str
    rows: int
    requests: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    answered_ids: list[str] = field(default_factory=list)
    # Answers whose X-Request-ID header is not the one sent: the client's id is echoed for
    # tracing, while the body's request_id is the server's own (the feedback key).
    unechoed_ids: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    # (time, version) each time the answers of this client changed model version.
    switches: list[tuple[float, str]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    crashed: str | None = None


def read_answer(response: httpx.Response, rows: int) -> tuple[str, str]:
    """The model version and request id of a 200 answer; ValueError when it is not one."""
    answer = response.json()
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    if rows == 1 and not isinstance(answer.get("predicted_species"), str):
        raise ValueError("no predicted_species")
    if rows > 1 and len(answer.get("predictions") or []) != rows:
        raise ValueError(f"not {rows} predictions")
    if "model_version" not in answer or "request_id" not in answer:
        raise ValueError("no model_version or request_id")
    return str(answer["model_version"]), str(answer["request_id"])


def thread(target: Callable[..., Any], *args: Any) -> threading.Thread:
    started = threading.Thread(target=target, args=args, daemon=True)
    started.start()
    return started


def every(seconds: float, until: threading.Event, tick: Callable[[], Any]) -> threading.Thread:
    def loop() -> None:
        while not until.wait(seconds):
            tick()

    return thread(loop)


class Soak:
    """Everything of one run on one clock that starts with the traffic; `run()` returns every
    figure."""

    def __init__(self, stack: PrivateStack, window_s: float) -> None:
        self.stack, self.window_s, self.url = stack, window_s, stack.gateway_url
        self.started, self.wall_started = time.monotonic(), time.time()
        self.traffic_over, self.polling_over = threading.Event(), threading.Event()
        self.events: list[dict[str, Any]] = []
        self.tallies: list[Tally] = []
        self.moves: list[dict[str, Any]] = []
        self.memory_series: list[dict[str, Any]] = []
        self.pids: dict[str, int | None] = {}
        self.restarts: Counter[str] = Counter()
        self.hostile: dict[str, Any] = {}
        self.hostile_threads: list[threading.Thread] = []
        self.redis_restart: dict[str, Any] | None = None
        self.keys = FeedbackKeys(stack.stack_env().get("JOBS_NAMESPACE") or DEFAULT_JOBS_NAMESPACE)
        self.auth = {"Authorization": f"Bearer {stack.token}"}
        self.retrains = RetrainJobs(self.url, stack.token, self.clock, self.event)

    def clock(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def event(self, what: str) -> float:
        now = self.clock()
        self.events.append({"t": now, "event": what})
        say(f"t={now:.1f}s {what}")
        return now

    # --- traffic ----------------------------------------------------------------------------

    def client(self, path: str, number: int, tally: Tally) -> None:
        """One request at a time until the traffic is over, each outcome counted; after a
        failure the client waits a little, so an outage is counted, not hammered."""
        body = encoded(FLOWER if tally.rows == 1 else {"instances": iris_flowers(tally.rows)})

        def fail(what: str, request_id: str, detail: str, pause: float = 0.05) -> None:
            tally.failures[what] += 1
            if len(tally.samples) < 20:
                sample = {"t": self.clock(), "kind": tally.kind, "failure": what}
                tally.samples.append(sample | {"request_id": request_id, "detail": detail[:300]})
            time.sleep(pause)

        try:
            with httpx.Client(base_url=self.url, headers=JSON, timeout=REQUEST_TIMEOUT_S) as http:
                while not self.traffic_over.is_set():
                    tally.requests += 1
                    request_id = f"soak-{tally.kind}-{number}-{tally.requests}"
                    sent = time.perf_counter()
                    try:
                        headers = {"X-Request-ID": request_id}
                        response = http.post(path, content=body, headers=headers)
                    except httpx.HTTPError as exc:
                        fail(type(exc).__name__, request_id, str(exc))
                        continue
                    latency_ms = (time.perf_counter() - sent) * 1000
                    if response.status_code != 200:
                        fail(f"HTTP {response.status_code}", request_id, response.text)
                        continue
                    try:
                        version, answered_id = read_answer(response, tally.rows)
                    except ValueError as exc:
                        fail("unreadable 200", request_id, str(exc), 0)
                        continue
                    tally.ok += 1
                    tally.latencies_ms.append(latency_ms)
                    tally.answered_ids.append(answered_id)
                    tally.unechoed_ids += response.headers.get("X-Request-ID") != request_id
                    tally.versions[version] += 1
                    if not tally.switches or tally.switches[-1][1] != version:
                        tally.switches.append((self.clock(), version))
        except Exception as exc:
            # Counts from here on would be missing: the run is reported as failed.
            tally.crashed = f"{type(exc).__name__}: {exc}"
            say(f"client {tally.kind}-{number} crashed: {tally.crashed}")

    def traffic(self, seconds: float) -> dict[str, Any]:
        def counts(tallies: list[Tally]) -> dict[str, Any]:
            failures: Counter[str] = sum((t.failures for t in tallies), Counter())
            return {
                "requests": sum(t.requests for t in tallies),
                "answered_200": sum(t.ok for t in tallies),
                "rows_answered": sum(t.ok * t.rows for t in tallies),
                "failed": sum(failures.values()),
                "failures": dict(failures),
            }

        by_kind = {}
        for kind, path, rows, clients in KINDS:
            tallies = [t for t in self.tallies if t.kind == kind]
            latencies = np.array([ms for t in tallies for ms in t.latencies_ms])
            by_kind[kind] = {
                "request": f"POST {path}",
                "rows_per_request": rows,
                "clients": clients,
            }
            by_kind[kind] |= counts(tallies) | {
                "requests_per_s": round(sum(t.ok for t in tallies) / seconds, 1),
                "latency_ms": {
                    name: round(float(np.percentile(latencies, q)), 2) if latencies.size else None
                    for name, q in (("p50", 50), ("p99", 99), ("max", 100))
                },
            }
        samples = sorted((s for t in self.tallies for s in t.samples), key=lambda s: s["t"])
        return {"seconds": round(seconds, 1), "by_kind": by_kind, **counts(self.tallies)} | {
            "failure_samples": samples[:20],
            "answers_per_model_version": dict(sum((t.versions for t in self.tallies), Counter())),
            "answers_not_echoing_the_x_request_id": sum(t.unechoed_ids for t in self.tallies),
            "crashed_clients": [t.crashed for t in self.tallies if t.crashed],
        }

    # --- moves, Redis, hostile clients, memory ----------------------------------------------

    def promote(self, version: str, label: str) -> None:
        move: dict[str, Any] = {"label": label, "to_version": version, "requested_s": self.clock()}
        answer, previous = "", None
        try:
            body = {"model_version": version}
            answered = httpx.post(f"{self.url}/promote", headers=self.auth, json=body, timeout=30)
            answer = str(answered.status_code)
            previous = answered.json().get("previous_version") if answer == "200" else None
        except httpx.HTTPError as exc:
            answer = type(exc).__name__
        move |= {"promote_seconds": round(self.clock() - move["requested_s"], 3)}
        move |= {"promote_answer": answer, "previous_version": previous}
        swap = dict.fromkeys(("first_new_answer_after_s", "all_new_answers_after_s"))
        self.moves.append(move | swap)
        self.event(f"POST /promote {label} (version {version}): {answer}")

    def time_swaps(self, end_s: float) -> None:
        """When the clients' answers first named each move's version, and when all of them did
        from then on, from each client's switches; seconds after the promotion was sent."""
        for index, move in enumerate(self.moves):
            start = move["requested_s"]
            end = self.moves[index + 1]["requested_s"] if index + 1 < len(self.moves) else end_s
            firsts, settled, all_settled = [], [], True
            for client in (t.switches for t in self.tallies):
                before = [v for t, v in client if t < start]
                inside = [(t, v) for t, v in client if start <= t < end]
                new = [t for t, v in inside if v == move["to_version"]]
                firsts += new[:1]
                final = inside[-1][1] if inside else (before[-1] if before else None)
                all_settled &= final == move["to_version"]
                settled.append(new[-1] if new else start)
            if firsts:
                move["first_new_answer_after_s"] = round(min(firsts) - start, 3)
            if all_settled and settled:
                move["all_new_answers_after_s"] = round(max(settled) - start, 3)

    def restart_redis_under_jobs(self, end: float) -> dict[str, Any]:
        """Stop Redis with SIGTERM and start it on the same folder while job B runs and job C
        waits in the queue behind it; then send both Idempotency-Keys again."""
        running = self.retrains.submit("B", end)
        deadline = self.clock() + 30.0
        while running["final_status"] == "queued" and self.clock() < deadline:
            time.sleep(0.2)
        waiting = self.retrains.submit("C", end)
        time.sleep(1.0)  # past the AOF's one-second fsync: C's record is on disk
        states = {job["label"]: job["final_status"] for job in self.retrains.jobs}
        stopped_at = self.event(f"Redis: SIGTERM (jobs: {states})")
        timings = self.stack.restart_redis()
        self.event(f"Redis answering again after {timings['down_s']} s")
        with redis.Redis.from_url(self.stack.redis_url, socket_timeout=5) as client:
            appendonly = client.config_get("appendonly").get("appendonly")
        for job in (running, waiting):
            if job["job_id"]:
                self.retrains.replay(job)
        return (
            timings
            | {"stopped_at_s": stopped_at, "appendonly": appendonly}
            | {
                "job_status_at_stop": states,
                "running_job": running["label"],
                "queued_job": waiting["label"],
            }
        )

    def in_background(self, phase: str, run: Callable[[str], dict[str, Any]]) -> None:
        """A hostile phase against the gateway beside the traffic, into `self.hostile[phase]`."""
        self.hostile[phase] = {"started_s": self.event(f"{phase} started")}

        def report() -> None:
            self.hostile[phase] |= run(self.url)
            self.event(f"{phase} over")

        self.hostile_threads.append(thread(report))

    def redis_memory(self) -> dict[str, Any]:
        """Redis's memory, its cap, and the bytes the predictor counts for the answers it keeps."""
        with redis.Redis.from_url(self.stack.redis_url, socket_timeout=10) as client:
            memory, kept = client.info("memory"), client.get(self.keys.prediction_bytes)
        figures = ("used_memory", "maxmemory", "maxmemory_policy")
        return {key: memory.get(key, 0) for key in figures} | {"kept_answer_bytes": int(kept or 0)}

    def memory_sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"t": self.clock()}
        for name, program in SERVICES.items():
            pid = self.pids.get(name)
            if pid is None or not alive(pid):
                # supervisorctl only when the program's pid is unknown or gone (a Python start).
                fresh = self.stack.pid(program)
                self.restarts[name] += pid is not None and fresh != pid
                pid = self.pids[name] = fresh
            sample[name] = tree_memory(pid)
        return sample

    def memory_report(self, start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
        """Growth of each service between two samples, its peak, and the RSS series."""
        services: dict[str, Any] = {}
        for name in SERVICES:
            first, last, samples = start.get(name), end.get(name), [start, *self.memory_series, end]
            peak = max((s[name]["rss_mib"] for s in samples if s.get(name)), default=None)
            entry: dict[str, Any] = {"start": first, "end": last, "peak_rss_mib": peak}
            if first and last:
                growth = round(last["rss_mib"] - first["rss_mib"], 1)
                entry["rss_growth_mib"] = growth
                entry["rss_growth_pct"] = round(100 * growth / first["rss_mib"], 1)
                entry["pss_growth_mib"] = round(last["pss_mib"] - first["pss_mib"], 1)
                entry["processes_replaced"] = len(set(first["pids"]) - set(last["pids"]))
            services[name] = entry | {"program_restarts": self.restarts[name]}
        series = [
            {"t": s["t"]} | {n: s[n]["rss_mib"] if s.get(n) else None for n in SERVICES}
            for s in self.memory_series
        ]
        span = {"start_s": start["t"], "end_s": end["t"]}
        return span | {"services": services, "rss_mib_series": series}

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        original = self.stack.production_version()
        self.hostile["redis_before"] = self.redis_memory()
        clients = []
        for kind, path, rows, count in KINDS:
            for number in range(count):
                self.tallies.append(tally := Tally(kind, rows))
                clients.append(thread(self.client, path, number, tally))
        self.event(f"traffic started; warm-up {WARMUP_S:g} s, then {self.window_s:g} s")
        time.sleep(WARMUP_S)
        memory_start = self.memory_sample()
        sample = lambda: self.memory_series.append(self.memory_sample())  # noqa: E731
        sampling = every(5.0, self.traffic_over, sample)
        polling = every(0.5, self.polling_over, self.retrains.poll)
        window_start = self.event("warm-up over: memory sampled, schedule started")
        try:
            self.schedule(original, window_start, window_start + self.window_s)
        finally:
            self.traffic_over.set()
            for client in clients:
                client.join(REQUEST_TIMEOUT_S + 30)
            traffic_end = self.event("traffic stopped")
            memory_end = self.memory_sample()
            sampling.join(30)
        for hostile in self.hostile_threads:
            hostile.join()
        self.hostile["redis_after"] = self.redis_memory()
        if self.retrains.open():
            grace = traffic_end + JOB_GRACE_S - self.clock()
            self.event(f"waiting up to {grace:.0f} s for the jobs")
        while self.retrains.open() and self.clock() < traffic_end + JOB_GRACE_S:
            time.sleep(1.0)
        self.polling_over.set()
        polling.join(30)
        self.retrains.close()
        predictor_stop = stop_predictor(self.stack)
        self.event(f"predictor stopped in {predictor_stop['seconds']} s")
        log_dir = Path(self.stack.stack_env()["PREDICTOR_PREDICTION_LOG_DIR"])
        answered = {request_id for t in self.tallies for request_id in t.answered_ids}
        answered |= set(self.hostile.get("flood", {}).pop("answered_ids", []))
        self.time_swaps(traffic_end)
        return {
            "original_version": original,
            "warmup_s": WARMUP_S,
            "window_s": self.window_s,
            "traffic": self.traffic(traffic_end),
            "jobs": self.retrains.finish(),
            "alias_moves": self.moves,
            "predictor_poll_interval_s": poll_interval_s(self.stack),
            "redis_restart": self.redis_restart,
            "hostile": self.hostile,
            "store_max_bytes": STORE_MAX_BYTES,
            "memory": self.memory_report(memory_start, memory_end),
            "predictor_stop": predictor_stop,
            "prediction_log": read_prediction_log(log_dir, answered),
            "feedback_store": self.feedback_store(answered, log_dir),
            "service_logs": service_log_findings([self.stack.logs, self.stack.state / "logs"]),
            "timeline": self.events,
        }

    def schedule(self, original: str, start: float, end: float) -> None:
        at = {step: start + share * self.window_s for step, share in SCHEDULE.items()}
        first: dict[str, Any] | None = None
        last: dict[str, Any] | None = None
        while (now := self.clock()) < end:
            if first is None and now >= at["A"]:
                first = self.retrains.submit("A", end)
                self.retrains.replay(first)
            if first is not None and not self.moves and now < end - MOVE_MARGIN_S:
                version = (first["registered"].get(MODEL_NAME) or {}).get("version")
                if first["final_status"] == "succeeded" and version:
                    self.promote(str(version), "to A's")
            if "slow_clients" not in self.hostile and now >= at["slow_clients"]:
                self.in_background("slow_clients", trickling_uploads)
            if "flood" not in self.hostile and now >= at["flood"]:
                self.in_background("flood", anonymous_flood)
            if self.redis_restart is None and now >= at["redis"]:
                self.redis_restart = self.restart_redis_under_jobs(end)
            if last is None and now >= at["D"]:
                last = self.retrains.submit("D", end)
            first_move = self.moves[0]["requested_s"] if self.moves else end
            back_at = max(at["back"], first_move + MOVE_MARGIN_S)
            if len(self.moves) == 1 and back_at <= now < end - MOVE_MARGIN_S:
                self.promote(original, "back to original")
            time.sleep(0.2)

    def feedback_store(self, answered: set[str], log_dir: Path) -> dict[str, Any]:
        """How many answered requests the predictor kept in Redis for POST /feedback (best effort
        by design: a Redis outage drops them), and when the others were answered."""
        with redis.Redis.from_url(self.stack.redis_url, socket_timeout=30) as client:
            kept = {key.decode() for key in client.zrange(self.keys.predictions_index, 0, -1)}
        not_kept = answered - kept
        documents = log_documents(log_dir)[0] if not_kept else []
        times = [
            datetime.fromisoformat(d["time"]).timestamp() - self.wall_started
            for d in documents
            if d.get("request_id") in not_kept
        ]
        span = [round(min(times), 3), round(max(times), 3)] if times else [None, None]
        return {
            "index": self.keys.predictions_index,
            "answered": len(answered),
            "kept": len(answered & kept),
            "not_kept": len(not_kept),
            "not_kept_answered_from_s": span[0],
            "not_kept_answered_to_s": span[1],
        }


def checks(soak: dict[str, Any]) -> list[dict[str, Any]]:
    """The must-holds: no failed prediction and no crashed client; no lost job (404 after its
    202, or no end within the run and the grace period); every trickling upload answered 408;
    the kept answers within the store's byte budget after the flood; as many log lines and rows
    as answered 200 (traffic and flood), none missing, unexpected or twice."""
    traffic, log, hostile = soak["traffic"], soak["prediction_log"], soak["hostile"]
    jobs = [job for job in soak["jobs"] if job["job_id"] is not None]
    lost = [job["label"] for job in jobs if job["lost"]]
    crashed = traffic["crashed_clients"]
    slow, flood, after = (hostile.get(k, {}) for k in ("slow_clients", "flood", "redis_after"))
    answered_200 = traffic["answered_200"] + flood.get("outcomes", {}).get("200", 0)
    rows_answered = traffic["rows_answered"] + flood.get("rows_answered", 0)
    strays = any(log[k] for k in ("answered_not_logged", "logged_not_answered", "logged_twice"))
    kept = after.get("kept_answer_bytes", 0)
    failed = f"{traffic['failed']:,} of {traffic['requests']:,}"
    failed += f"; {len(crashed)} client thread(s) crashed" if crashed else ""
    slow_408 = f"{slow.get('answered_408', 0):,} of {slow.get('connections', 0):,}"
    flooded = f"{flood.get('batches', 0)} batches of {FLOOD_BATCH_ROWS:,} rows"
    lines = f"{log['lines']:,} lines / {answered_200:,} answers"
    rows = f"{log['rows']:,} rows / {rows_answered:,} rows"
    records = [
        ("Failed predictions (non-200 answers and transport errors)", "0", failed,
         traffic["failed"] == 0 and not crashed),
        (f"Lost retrain jobs (404 after the 202, or no end within the run + {JOB_GRACE_S:g} s)",
         "0", f"{len(lost)} of {len(jobs)}" + (f": {', '.join(lost)}" if lost else ""),
         not lost and bool(jobs)),
        (f"Trickling uploads ({TRICKLING_CONNECTIONS:,}): each answered 408", "all",
         f"{slow_408} ({slow.get('outcomes', {})})",
         bool(slow) and slow.get("answered_408") == slow.get("connections")),
        ("Anonymous flood: bytes of kept answers within PREDICTOR_STORE_MAX_BYTES",
         f"<= {soak['store_max_bytes']:,}",
         f"{kept:,} after {flooded} ({flood.get('outcomes', {})})",
         bool(flood) and kept <= soak["store_max_bytes"]),
        ("Prediction log: lines = requests answered 200, rows = rows answered (traffic and flood)",
         "equal", f"{lines}; {rows}",
         log["lines"] == answered_200 and log["rows"] == rows_answered and not strays),
    ]  # fmt: skip
    return [dict(zip(("check", "target", "measured", "met"), r, strict=True)) for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the run (5)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/soak-results.json")
    args = parser.parse_args(argv)
    # Rotation keeps 5 files per process by default; the soak keeps every file so that each line
    # can be counted, while rotation itself still happens at the usual size.
    os.environ["PREDICTOR_PREDICTION_LOG_BACKUP_COUNT"] = "100000"
    os.environ["PREDICTOR_STORE_MAX_BYTES"] = str(STORE_MAX_BYTES)
    with Session("soak", f"python -m bench.soak --minutes {args.minutes:g}") as session:
        session.up(durable_redis=True)
        soak = Soak(session.stack, args.minutes * 60).run()
        verdicts = checks(soak)
        # The state folder (logs) is kept when a must-hold failed.
        session.finished = all(check["met"] for check in verdicts)
    results = session.results | {"output": str(args.output), "soak": soak, "checks": verdicts}
    write(results | session.closing(), args.output, "soak.md")
    say("all held" if session.finished else "A MUST-HOLD FAILED")
    return 0 if session.finished else 1


if __name__ == "__main__":
    sys.exit(main())
