"""`make soak`: minutes of mixed traffic through the gateway while retrains run, the
`production` alias moves and Redis restarts, all at once. Not part of `make test`.

It starts a second local stack as `make bench` does (bench/session.py), with a durable Redis
(append-only file, synced every second, as supervisord runs it) so that a restart keeps the
jobs. Then, on one clock that starts with the traffic:

  - client threads (bench/loads.py, Traffic) send one-row `POST /predict` and 100-row
    `POST /predict/batch` through the gateway, one request at a time each, for a warm-up and
    the whole run, each request with its own X-Request-ID, each outcome counted;
  - retrain jobs go in through `POST /retrain` with an Idempotency-Key and are polled through
    `GET /jobs/{id}` until they end (bench/phases.py, JobDesk);
  - once the first job has registered a version, `POST /promote` moves `production` to it, and
    later back to the original version; the answers' `model_version` shows when each move
    was served;
  - Redis is stopped with SIGTERM and started again on the same folder while one job runs and
    another waits in the queue; their Idempotency-Keys are sent again afterwards (the first
    job's at once), and must bring back the same jobs;
  - trickling uploads, then a flood of anonymous 10,000-row batches, beside the traffic;
  - the memory of each service's process tree is sampled every few seconds.

Then the jobs get a grace period to end, the predictor is stopped gracefully (its recorder
writes what it queued) and its prediction log is read back: one line per request answered
200, holding that request's rows.

Must hold, or the exit code is 1: no failed prediction and no crashed client; no lost job (one
that answers 404 after its 202, or does not end within the run and the grace period); every
trickling upload answered 408; the kept answers within the store's byte budget after the flood;
as many log lines as predictions answered 200 (traffic and flood), as many logged rows as rows
answered, none missing, unexpected or twice. Reported, not judged: memory growth between the
end of the warm-up and the end of the run, how many answered requests the predictor kept in
Redis for feedback (best effort: an outage drops them), and the warnings and errors in every
service's log.

    python -m bench.soak [--minutes 5] [--output bench/soak-results.json]

The Markdown summary goes beside the JSON (same name, `.md`). BENCH_KEEP_STATE=1 keeps the
state folder (logs included); it is kept anyway when a must-hold fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import loads, measurements, phases
from bench.config import MODEL_NAME, ROOT
from bench.console import Clock, say
from bench.report import soak_markdown, write
from bench.session import Session
from iris_devstack.private_stack import PrivateStack

DEFAULT_OUTPUT = ROOT / "bench" / "soak-results.json"
SOAK_BATCH_ROWS = 100
ONE_ROW_CLIENTS = 4
BATCH_CLIENTS = 2
WARMUP_S = 15.0
JOB_GRACE_S = 300.0
# When, as a share of the run, each step starts (the first promotion waits for the first job).
FIRST_JOB_AT = 0.05
SLOW_CLIENTS_AT = 0.2
REDIS_RESTART_AT = 0.45
FLOOD_AT = 0.55
LAST_JOB_AT = 0.65
PROMOTE_BACK_AT = 0.75
FLOOD_BATCHES = 120
# Small enough for the flood to reach it: the soak shows the budget holding.
STORE_MAX_BYTES = 8 * 1024 * 1024
# A move needs this long before the run ends, or its swap could not be seen.
MOVE_MARGIN_S = 15.0
# Log rotation keeps 5 files per process by default; the soak keeps them all so that every
# line can be counted, while rotation itself still happens at the usual size.
LOG_BACKUP_COUNT = "100000"


def request_kinds() -> list[tuple[loads.RequestKind, int]]:
    """Each kind of request and how many client threads send it."""
    one = json.dumps(loads.FLOWER).encode()
    batch = json.dumps(loads.predictor_batch(loads.iris_flowers(SOAK_BATCH_ROWS))).encode()
    return [
        (loads.RequestKind("one_row", "/predict", one, 1), ONE_ROW_CLIENTS),
        (loads.RequestKind("batch", "/predict/batch", batch, SOAK_BATCH_ROWS), BATCH_CLIENTS),
    ]


class Soak:
    """The run itself: traffic, jobs, moves, the Redis restart, hostile clients and memory, on
    one clock that starts with the traffic."""

    def __init__(self, stack: PrivateStack, window_s: float) -> None:
        self.stack = stack
        self.window_s = window_s
        self.clock = Clock()
        self.traffic = loads.Traffic(stack.gateway_url, request_kinds(), self.clock)
        self.jobs = phases.JobDesk(stack, self.clock)
        self.memory = measurements.MemoryWatch(stack, self.clock)
        self.moves: list[phases.AliasMove] = []
        self.redis_restart: dict[str, Any] | None = None
        self.hostile: dict[str, Any] = {}
        self._hostile_threads: list[threading.Thread] = []

    def run(self) -> dict[str, Any]:
        original = self.stack.production_version()
        self.hostile["redis_before"] = measurements.redis_memory(self.stack)
        self.traffic.start()
        self.clock.add(f"traffic started; warm-up {WARMUP_S:g} s, then {self.window_s:g} s")
        time.sleep(WARMUP_S)
        memory_start = self.memory.sample()
        self.memory.start()
        self.jobs.start()
        window_start = self.clock()
        self.clock.add("warm-up over: memory sampled, schedule started")
        try:
            self._schedule(original, window_start, window_start + self.window_s)
        finally:
            self.traffic.stop()
            traffic_end = self.clock()
            self.clock.add("traffic stopped")
            memory_end = self.memory.sample()
            self.memory.stop()
        for thread in self._hostile_threads:
            thread.join()
        self.hostile["redis_after"] = measurements.redis_memory(self.stack)
        self.jobs.wait(traffic_end + JOB_GRACE_S)
        self.jobs.stop()
        predictor_stop = measurements.stop_predictor(self.stack)
        self.clock.add(f"predictor stopped in {predictor_stop['seconds']} s")
        log_dir = Path(self.stack.stack_env()["PREDICTOR_PREDICTION_LOG_DIR"])
        flood = self.hostile.get("flood", {})
        answered = self.traffic.answered_ids() | set(flood.pop("answered_ids", []))
        phases.time_swaps(self.moves, [t.switches for t in self.traffic.tallies], traffic_end)
        return {
            "original_version": original,
            "warmup_s": WARMUP_S,
            "window_s": self.window_s,
            "traffic": self.traffic.summary(traffic_end),
            "jobs": [job.as_dict() for job in self.jobs.jobs],
            "alias_moves": [asdict(move) for move in self.moves],
            "predictor_poll_interval_s": phases.poll_interval_s(self.stack),
            "redis_restart": self.redis_restart,
            "hostile": self.hostile,
            "store_max_bytes": STORE_MAX_BYTES,
            "memory": self.memory.report(memory_start, memory_end),
            "predictor_stop": predictor_stop,
            "prediction_log": measurements.read_prediction_log(log_dir, answered),
            "feedback_store": measurements.feedback_store_report(
                self.stack, answered, log_dir, self.clock
            ),
            "service_logs": measurements.service_log_findings(
                [self.stack.logs, self.stack.state / "logs"]
            ),
            "timeline": self.clock.events,
        }

    def _schedule(self, original: str, start: float, end: float) -> None:
        def at(share: float) -> float:
            return start + share * self.window_s

        first: phases.TrackedJob | None = None
        last: phases.TrackedJob | None = None
        while self.clock() < end:
            now = self.clock()
            if first is None and now >= at(FIRST_JOB_AT):
                first = self.jobs.submit("A", end)
                self.jobs.replay(first)
            if first is not None and not self.moves and now < end - MOVE_MARGIN_S:
                version = (first.registered.get(MODEL_NAME) or {}).get("version")
                if first.final_status == "succeeded" and version:
                    self.moves.append(
                        phases.promote(self.stack, self.clock, str(version), "to A's")
                    )
            if "slow_clients" not in self.hostile and now >= at(SLOW_CLIENTS_AT):
                self._in_background("slow_clients", phases.trickling_uploads)
            if "flood" not in self.hostile and now >= at(FLOOD_AT):
                self._in_background("flood", lambda url: phases.anonymous_flood(url, FLOOD_BATCHES))
            if self.redis_restart is None and now >= at(REDIS_RESTART_AT):
                self.redis_restart = phases.restart_redis_under_jobs(self.stack, self.jobs, end)
            if last is None and now >= at(LAST_JOB_AT):
                last = self.jobs.submit("D", end)
            back_at = (
                max(at(PROMOTE_BACK_AT), self.moves[0].requested_s + MOVE_MARGIN_S)
                if self.moves
                else end
            )
            if len(self.moves) == 1 and back_at <= now < end - MOVE_MARGIN_S:
                self.moves.append(
                    phases.promote(self.stack, self.clock, original, "back to original")
                )
            time.sleep(0.2)

    def _in_background(self, phase: str, run: Callable[[str], dict[str, Any]]) -> None:
        """Run a hostile phase against the gateway beside the traffic; its report lands in
        `self.hostile[phase]`."""
        self.hostile[phase] = {"started_s": self.clock.add(f"{phase} started")}

        def report() -> None:
            self.hostile[phase] |= run(self.stack.gateway_url)
            self.clock.add(f"{phase} over")

        thread = threading.Thread(target=report, name=phase, daemon=True)
        thread.start()
        self._hostile_threads.append(thread)


def checks(soak: dict[str, Any]) -> list[dict[str, Any]]:
    """The must-holds, each a record: check, target, measured, met."""
    traffic, log, hostile = soak["traffic"], soak["prediction_log"], soak["hostile"]
    jobs = [job for job in soak["jobs"] if job["job_id"] is not None]
    lost = [job["label"] for job in jobs if job["lost"]]
    crashed = traffic["crashed_clients"]
    slow, flood, after = (hostile.get(k, {}) for k in ("slow_clients", "flood", "redis_after"))
    answered_200 = traffic["answered_200"] + flood.get("outcomes", {}).get("200", 0)
    rows_answered = traffic["rows_answered"] + flood.get("rows_answered", 0)
    strays = ("answered_not_logged", "logged_not_answered", "logged_twice")
    log_matches = (
        log["lines"] == answered_200
        and log["rows"] == rows_answered
        and not any(log[k] for k in strays)
    )
    kept = after.get("kept_answer_bytes", 0)
    failed = f"{traffic['failed']:,} of {traffic['requests']:,}"
    failed += f"; {len(crashed)} client thread(s) crashed" if crashed else ""
    slow_408 = f"{slow.get('answered_408', 0):,} of {slow.get('connections', 0):,}"
    flooded = f"{flood.get('batches', 0)} batches of {phases.FLOOD_BATCH_ROWS:,} rows"
    lines = f"{log['lines']:,} lines / {answered_200:,} answers"
    rows = f"{log['rows']:,} rows / {rows_answered:,} rows"
    records = [
        ("Failed predictions (non-200 answers and transport errors)", "0", failed,
         traffic["failed"] == 0 and not crashed),
        (f"Lost retrain jobs (404 after the 202, or no end within the run + {JOB_GRACE_S:g} s)",
         "0", f"{len(lost)} of {len(jobs)}" + (f": {', '.join(lost)}" if lost else ""),
         not lost and bool(jobs)),
        (f"Trickling uploads ({phases.TRICKLING_CONNECTIONS:,}): each answered 408", "all",
         f"{slow_408} ({slow.get('outcomes', {})})",
         bool(slow) and slow.get("answered_408") == slow.get("connections")),
        ("Anonymous flood: bytes of kept answers within PREDICTOR_STORE_MAX_BYTES",
         f"<= {soak['store_max_bytes']:,}",
         f"{kept:,} after {flooded} ({flood.get('outcomes', {})})",
         bool(flood) and kept <= soak["store_max_bytes"]),
        ("Prediction log: lines = requests answered 200, rows = rows answered (traffic and flood)",
         "equal", f"{lines}; {rows}", log_matches),
    ]  # fmt: skip
    return [dict(zip(("check", "target", "measured", "met"), r, strict=True)) for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the run (5)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="results JSON; the Markdown summary goes beside it (.md)",
    )
    args = parser.parse_args(argv)
    os.environ["PREDICTOR_PREDICTION_LOG_BACKUP_COUNT"] = LOG_BACKUP_COUNT
    os.environ["PREDICTOR_STORE_MAX_BYTES"] = str(STORE_MAX_BYTES)
    with Session("soak", f"python -m bench.soak --minutes {args.minutes:g}") as session:
        say("starting the soak stack (durable Redis, then python -m iris_devstack up)")
        session.stack.start_redis(durable=True)
        session.stack.up()
        soak = Soak(session.stack, args.minutes * 60).run()
        verdicts = checks(soak)
        # The state folder (logs) is kept when a must-hold failed.
        session.finished = all(check["met"] for check in verdicts)
    results = session.results | {"output": str(args.output), "soak": soak, "checks": verdicts}
    write(results | session.closing(), args.output, soak_markdown)
    say("all held" if session.finished else "A MUST-HOLD FAILED")
    return 0 if session.finished else 1


if __name__ == "__main__":
    sys.exit(main())
