"""`make soak`: minutes of mixed traffic through the gateway while retrains run, the
`production` alias moves and Redis restarts, all at once. Not part of `make test`.

It starts a second local stack as `make bench` does (bench/local_stack.py: free ports, its own
state folder and token), with a durable Redis (append-only file, synced every second, as
supervisord runs it) so that a restart keeps the jobs. Then, at the same time:

  - client threads send one-row `POST /predict` and 100-row `POST /predict/batch` through the
    gateway, one request at a time each, for a warm-up and the whole run. Each request carries
    its own X-Request-ID and each outcome is counted: 200, any other status, or a transport
    error (a Python client rather than wrk, which drops the requests in flight when it stops
    and so cannot be matched line for line with the prediction log);
  - retrain jobs go in through `POST /retrain` with an Idempotency-Key and are polled through
    `GET /jobs/{id}` until they end;
  - once the first job has registered a version, `POST /promote` moves `production` to it, and
    later back to the original version; the answers' `model_version` shows when each move
    was served;
  - Redis is stopped with SIGTERM and started again on the same folder while one job runs and
    another waits in the queue; their Idempotency-Keys are sent again afterwards (the first
    job's at once), and must bring back the same jobs;
  - the memory of each service's process tree is sampled every few seconds.

Then the jobs get a grace period to end, the predictor is stopped gracefully (its recorder
writes what it queued) and its prediction log is read back: one line per request answered
200, holding that request's rows.

Must hold, or the exit code is 1: no failed prediction; no lost job (one that answers 404 after
its 202, or does not end within the run and the grace period); as many log lines as
predictions answered 200, and as many logged rows as rows answered. Reported, not judged: memory
growth between the end of the warm-up and the end of the run, how many answered requests the
predictor kept in Redis for feedback (best effort: an outage drops them), and the warnings and
errors in every service's log.

    python -m bench.soak [--minutes 5] [--output bench/soak-results.json]

The Markdown summary goes beside the JSON (same name, `.md`). BENCH_KEEP_STATE=1 keeps the
state folder (logs included); it is kept anyway when a must-hold fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench import hostile, payloads
from bench.config import MODEL_NAME, ROOT
from bench.console import say
from bench.local_stack import BenchStack
from bench.machine import git_commit, load_average, machine
from bench.memory import process_tree, tree_memory
from bench.report import _cell, _table
from bench.run import poll_interval_s
from iris_predictor.prediction_log import log_files
from iris_shared.feedback import FeedbackKeys
from iris_shared.jobs import DEFAULT_JOBS_NAMESPACE

DEFAULT_OUTPUT = ROOT / "bench" / "soak-results.json"
SOAK_BATCH_ROWS = 100
ONE_ROW_CLIENTS = 4
BATCH_CLIENTS = 2
REQUEST_TIMEOUT_S = 30.0
# A client that just failed waits a little, so an outage is counted, not hammered.
FAILURE_PAUSE_S = 0.05
WARMUP_S = 15.0
MEMORY_EVERY_S = 5.0
JOB_POLL_EVERY_S = 0.5
JOB_GRACE_S = 300.0
SUBMIT_RETRY_S = 3.0
# When, as a share of the run, each step starts (the first promotion waits for the first job).
FIRST_JOB_AT = 0.05
REDIS_RESTART_AT = 0.45
# Hostile clients beside the traffic: trickling uploads, then a flood of anonymous batches.
SLOW_CLIENTS_AT = 0.2
FLOOD_AT = 0.55
FLOOD_BATCHES = 120
# Small enough for the flood to reach it: the soak shows the budget holding.
STORE_MAX_BYTES = 8 * 1024 * 1024
LAST_JOB_AT = 0.65
PROMOTE_BACK_AT = 0.75
# A move needs this long before the run ends, or its swap could not be seen.
MOVE_MARGIN_S = 15.0
RUNNING_WAIT_S = 30.0
# Log rotation keeps 5 files per process by default; the soak keeps them all so that every
# line can be counted, while rotation itself still happens at the usual size.
LOG_BACKUP_COUNT = "100000"
SERVICES = {
    "predictor": "predictor",
    "gateway": "gateway",
    "trainer worker": "trainer",
    "MLflow server": "mlflow",
}
FAILURE_SAMPLES = 20


class Clock:
    """Seconds since the traffic started: every time in the results is on this clock."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.wall_started = time.time()

    def at(self, epoch_s: float) -> float:
        """A wall-clock time (a log line's) on this clock."""
        return round(epoch_s - self.wall_started, 3)

    def __call__(self) -> float:
        return round(time.monotonic() - self.started, 3)


@dataclass
class Timeline:
    clock: Clock
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, what: str) -> float:
        now = self.clock()
        self.events.append({"t": now, "event": what})
        say(f"t={now:.1f}s {what}")
        return now


# --- traffic ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestKind:
    name: str
    path: str
    body: bytes
    rows: int


def request_kinds() -> list[tuple[RequestKind, int]]:
    """Each kind of request and how many client threads send it."""
    one = json.dumps(payloads.FLOWER).encode()
    batch = json.dumps(payloads.predictor_batch(payloads.iris_flowers(SOAK_BATCH_ROWS))).encode()
    return [
        (RequestKind("one_row", "/predict", one, 1), ONE_ROW_CLIENTS),
        (RequestKind("batch", "/predict/batch", batch, SOAK_BATCH_ROWS), BATCH_CLIENTS),
    ]


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
            self.failure_samples.append(
                {
                    "t": t,
                    "kind": self.kind,
                    "failure": what,
                    "request_id": request_id,
                    "detail": detail[:300],
                }
            )


def read_answer(response: httpx.Response, kind: RequestKind) -> tuple[str, str]:
    """The model version and request id of a 200 answer; ValueError when it is not one."""
    answer = response.json()
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    if kind.rows == 1:
        if not isinstance(answer.get("predicted_species"), str):
            raise ValueError("no predicted_species")
    elif len(answer.get("predictions") or []) != kind.rows:
        raise ValueError(f"not {kind.rows} predictions")
    if "model_version" not in answer or "request_id" not in answer:
        raise ValueError("no model_version or request_id")
    return str(answer["model_version"]), str(answer["request_id"])


class Traffic:
    def __init__(self, gateway_url: str, clock: Clock) -> None:
        self.gateway_url = gateway_url
        self.clock = clock
        self.stopping = threading.Event()
        self.tallies: list[ClientTally] = []
        self.threads: list[threading.Thread] = []
        self.kinds = request_kinds()

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
        with httpx.Client(
            base_url=self.gateway_url, headers=headers, timeout=REQUEST_TIMEOUT_S
        ) as client:
            sequence = 0
            while not self.stopping.is_set():
                sequence += 1
                request_id = f"soak-{kind.name}-{number}-{sequence}"
                tally.requests += 1
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
                    what = f"HTTP {response.status_code}"
                    tally.fail(self.clock(), what, request_id, response.text)
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
        by_kind: dict[str, Any] = {}
        for kind, clients in self.kinds:
            tallies = [t for t in self.tallies if t.kind == kind.name]
            failures: Counter[str] = sum((t.failures for t in tallies), Counter())
            latencies = np.array([ms for t in tallies for ms in t.latencies_ms])
            ok = sum(t.ok for t in tallies)
            by_kind[kind.name] = {
                "request": f"POST {kind.path}",
                "rows_per_request": kind.rows,
                "clients": clients,
                "requests": sum(t.requests for t in tallies),
                "answered_200": ok,
                "rows_answered": sum(t.ok_rows for t in tallies),
                "failed": sum(failures.values()),
                "failures": dict(failures),
                "requests_per_s": round(ok / seconds, 1),
                "latency_ms": {
                    name: round(float(np.percentile(latencies, q)), 2) if latencies.size else None
                    for name, q in (("p50", 50), ("p99", 99), ("max", 100))
                },
            }
        failures_total: Counter[str] = sum((t.failures for t in self.tallies), Counter())
        samples = sorted((s for t in self.tallies for s in t.failure_samples), key=lambda s: s["t"])
        return {
            "seconds": round(seconds, 1),
            "by_kind": by_kind,
            "requests": sum(t.requests for t in self.tallies),
            "answered_200": sum(t.ok for t in self.tallies),
            "rows_answered": sum(t.ok_rows for t in self.tallies),
            "failed": sum(failures_total.values()),
            "failures": dict(failures_total),
            "failure_samples": samples[:FAILURE_SAMPLES],
            "answers_per_model_version": dict(sum((t.versions for t in self.tallies), Counter())),
            "answers_with_another_request_id": sum(t.other_ids for t in self.tallies),
            "crashed_clients": [t.crashed for t in self.tallies if t.crashed],
        }

    def answered_ids(self) -> set[str]:
        return {request_id for t in self.tallies for request_id in t.answered_ids}


# --- retrain jobs -----------------------------------------------------------------------------


@dataclass
class TrackedJob:
    label: str
    idempotency_key: str
    submitted_s: float
    job_id: str | None = None
    submit_answers: list[str] = field(default_factory=list)
    replays: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    not_found: int = 0
    not_found_at: list[float] = field(default_factory=list)
    unavailable: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)
    ended_s: float | None = None
    error: str | None = None
    deliveries: int | None = None
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in {"succeeded", "failed"}

    @property
    def lost(self) -> bool:
        return self.job_id is not None and (self.not_found > 0 or not self.ended)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "job_id": self.job_id,
            "idempotency_key": self.idempotency_key,
            "submitted_s": self.submitted_s,
            "submit_answers": self.submit_answers,
            "final_status": self.status,
            "ended_s": self.ended_s,
            "seconds": None if self.ended_s is None else round(self.ended_s - self.submitted_s, 1),
            "lost": self.lost,
            "not_found_answers": self.not_found,
            "not_found_at_s": self.not_found_at,
            "unavailable_answers": self.unavailable,
            "poll_errors": dict(self.poll_errors),
            "deliveries": self.deliveries,
            "error": self.error,
            "registered": self.registered,
            "replays": self.replays,
            "history": self.history,
        }


class JobDesk:
    """Submits retrain jobs through the gateway and polls each one until it ends."""

    def __init__(self, stack: BenchStack, timeline: Timeline) -> None:
        self.url = stack.gateway_url
        self.headers = {"Authorization": f"Bearer {stack.token}"}
        self.timeline = timeline
        self.clock = timeline.clock
        self.run = secrets.token_hex(4)
        self.jobs: list[TrackedJob] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.poller = threading.Thread(target=self._poll_until_stopped, name="soak-jobs")

    def _post_retrain(self, key: str) -> tuple[str, dict[str, Any] | None]:
        try:
            response = httpx.post(
                f"{self.url}/retrain",
                headers={**self.headers, "Idempotency-Key": key},
                timeout=15,
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        body = response.json() if response.status_code in (200, 202) else None
        return str(response.status_code), body

    def submit(self, label: str, give_up_s: float) -> TrackedJob:
        """POST /retrain until accepted (a 429 or 503 is retried) or until `give_up_s`."""
        job = TrackedJob(label, f"soak-{self.run}-{label}", self.clock())
        with self.lock:
            self.jobs.append(job)
        while True:
            answer, body = self._post_retrain(job.idempotency_key)
            job.submit_answers.append(answer)
            if body is not None:
                job.job_id, job.status = str(body["job_id"]), str(body["status"])
                self.timeline.add(f"job {label} submitted: {answer}, {job.job_id}")
                return job
            if self.clock() > give_up_s:
                self.timeline.add(f"job {label} not accepted: {job.submit_answers}")
                return job
            time.sleep(SUBMIT_RETRY_S)

    def replay(self, job: TrackedJob) -> dict[str, Any]:
        """Send the job's Idempotency-Key again: the answer must be 200 and the same job."""
        answer, body = self._post_retrain(job.idempotency_key)
        job_id = None if body is None else str(body["job_id"])
        replayed_at = self.clock()
        replay = {"t": replayed_at, "answer": answer, "job_id": job_id}
        replay["same_job"] = job_id == job.job_id and answer == "200"
        job.replays.append(replay)
        if answer == "202" and job_id is not None:
            # The key was forgotten and a second job started: follow it as well.
            extra = TrackedJob(f"{job.label} again", job.idempotency_key, replayed_at, job_id)
            with self.lock:
                self.jobs.append(extra)
        return replay

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.stopping.set()
        self.poller.join(30)

    def all_ended(self) -> bool:
        with self.lock:
            return all(job.ended for job in self.jobs if job.job_id is not None)

    def _poll_until_stopped(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            while not self.stopping.wait(JOB_POLL_EVERY_S):
                with self.lock:
                    open_jobs = [j for j in self.jobs if j.job_id is not None and not j.ended]
                for job in open_jobs:
                    self._poll(client, job)

    def _poll(self, client: httpx.Client, job: TrackedJob) -> None:
        try:
            response = client.get(f"/jobs/{job.job_id}")
        except httpx.HTTPError as exc:
            job.poll_errors[type(exc).__name__] += 1
            return
        now = self.clock()
        if response.status_code == 404:
            job.not_found += 1
            if len(job.not_found_at) < 10:
                job.not_found_at.append(now)
            self.timeline.add(f"job {job.label} answered 404")
            return
        if response.status_code == 503:
            job.unavailable += 1
            return
        if response.status_code != 200:
            job.poll_errors[f"HTTP {response.status_code}"] += 1
            return
        record = response.json()
        progress = record.get("progress") or {}
        step = {
            "status": record["status"],
            "stage": progress.get("stage"),
            "model": progress.get("model_name"),
        }
        last = job.history[-1] if job.history else {}
        if {k: last.get(k) for k in step} != step:
            job.history.append({"t": now, **step})
        job.status = record["status"]
        job.deliveries = record.get("deliveries")
        if job.ended:
            job.ended_s = now
            job.error = record.get("error")
            models = (record.get("result") or {}).get("models") or {}
            job.registered = {
                name: {"version": m.get("version"), "gate": m.get("gate")}
                for name, m in models.items()
            }
            self.timeline.add(f"job {job.label} {job.status} after {now - job.submitted_s:.1f} s")


# --- alias moves ------------------------------------------------------------------------------


@dataclass
class AliasMove:
    label: str
    to_version: str
    requested_s: float
    answered_s: float | None = None
    answer: str | None = None
    previous_version: str | None = None
    first_new_answer_s: float | None = None
    all_new_answers_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "to_version": self.to_version,
            "previous_version": self.previous_version,
            "requested_s": self.requested_s,
            "promote_answer": self.answer,
            "promote_seconds": None
            if self.answered_s is None
            else round(self.answered_s - self.requested_s, 3),
            "first_new_answer_after_s": self.first_new_answer_s,
            "all_new_answers_after_s": self.all_new_answers_s,
        }


def promote(stack: BenchStack, timeline: Timeline, version: str, label: str) -> AliasMove:
    move = AliasMove(label, version, timeline.clock())
    try:
        response = httpx.post(
            f"{stack.gateway_url}/promote",
            headers={"Authorization": f"Bearer {stack.token}"},
            json={"model_version": version},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        move.answer = type(exc).__name__
    else:
        move.answer = str(response.status_code)
        if response.status_code == 200:
            move.previous_version = response.json().get("previous_version")
    move.answered_s = timeline.clock()
    timeline.add(f"POST /promote {label} (version {version}): {move.answer}")
    return move


def time_swaps(moves: list[AliasMove], tallies: list[ClientTally], traffic_end_s: float) -> None:
    """When the clients' answers first named each move's version, and when all of them did
    from then on; seconds after the promotion was sent (the alias moves before it answers)."""
    for index, move in enumerate(moves):
        start = move.requested_s
        end = moves[index + 1].requested_s if index + 1 < len(moves) else traffic_end_s
        firsts: list[float] = []
        settled: list[float] = []
        all_settled = True
        for tally in tallies:
            before = [v for t, v in tally.switches if t < start]
            inside = [(t, v) for t, v in tally.switches if start <= t < end]
            new = [t for t, v in inside if v == move.to_version]
            firsts += new[:1]
            final = inside[-1][1] if inside else (before[-1] if before else None)
            if final != move.to_version:
                all_settled = False
            settled.append(new[-1] if new else start)
        if firsts:
            move.first_new_answer_s = round(min(firsts) - start, 3)
        if all_settled and settled:
            move.all_new_answers_s = round(max(settled) - start, 3)


# --- memory -----------------------------------------------------------------------------------


class MemoryWatch:
    """RSS and PSS of each service's process tree, now and then (bench/memory.py)."""

    def __init__(self, stack: BenchStack, clock: Clock) -> None:
        self.stack = stack
        self.clock = clock
        self.pids: dict[str, int | None] = {}
        self.restarts: Counter[str] = Counter()
        self.series: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample_until_stopped, name="soak-memory")

    def _pid(self, name: str) -> int | None:
        pid = self.pids.get(name)
        if pid is not None and Path(f"/proc/{pid}").exists():
            return pid
        # supervisorctl only when the program's pid is unknown or gone (it is a Python start).
        fresh = self.stack.pid(SERVICES[name])
        if pid is not None and fresh != pid:
            self.restarts[name] += 1
        self.pids[name] = fresh
        return fresh

    def sample(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = {"t": self.clock()}
        for name in SERVICES:
            pid = self._pid(name)
            memory = tree_memory(pid)
            if memory is not None and pid is not None:
                memory["pids"] = sorted(process_tree(pid))
            snapshot[name] = memory
        return snapshot

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _sample_until_stopped(self) -> None:
        while not self.stopping.wait(MEMORY_EVERY_S):
            self.series.append(self.sample())


def memory_report(start: dict[str, Any], end: dict[str, Any], watch: MemoryWatch) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for name in SERVICES:
        first, last = start.get(name), end.get(name)
        peak = max(
            (s[name]["rss_mib"] for s in [start, *watch.series, end] if s.get(name)), default=None
        )
        entry: dict[str, Any] = {"start": first, "end": last, "peak_rss_mib": peak}
        if first and last:
            growth = round(last["rss_mib"] - first["rss_mib"], 1)
            entry.update(
                rss_growth_mib=growth,
                rss_growth_pct=round(100 * growth / first["rss_mib"], 1),
                pss_growth_mib=round(last["pss_mib"] - first["pss_mib"], 1),
                processes_replaced=len(set(first["pids"]) - set(last["pids"])),
            )
        entry["program_restarts"] = watch.restarts[name]
        services[name] = entry
    series = [
        {"t": s["t"], **{n: s[n]["rss_mib"] if s.get(n) else None for n in SERVICES}}
        for s in watch.series
    ]
    return {
        "start_s": start["t"],
        "end_s": end["t"],
        "services": services,
        "rss_mib_series": series,
    }


# --- the prediction log -----------------------------------------------------------------------


def stop_predictor(stack: BenchStack) -> dict[str, Any]:
    """supervisorctl stop: SIGTERM to the predictor's process group, SIGKILL only after
    stopwaitsecs; whether it came to that is in supervisord's own log."""
    started = time.monotonic()
    completed = stack.supervisorctl("stop", "predictor:*")  # replicas: a bare name matches none
    seconds = round(time.monotonic() - started, 2)
    supervisord_log = stack.state / "logs" / "supervisord.log"
    lines = (
        supervisord_log.read_text(errors="replace").splitlines() if supervisord_log.exists() else []
    )
    mentions = [line for line in lines if "predictor" in line][-4:]
    return {
        "seconds": seconds,
        "supervisorctl": (completed.stdout + completed.stderr).strip(),
        "supervisord_log": mentions,
        "killed": any("SIGKILL" in line for line in mentions),
    }


def read_prediction_log(directory: Path, answered: set[str]) -> dict[str, Any]:
    files = log_files(directory)
    lines = rows = unreadable = 0
    logged: Counter[str] = Counter()
    for path in files:
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    document = json.loads(raw)
                except ValueError:
                    unreadable += 1
                    continue
                lines += 1
                rows += int(document.get("rows", 0))
                logged[str(document.get("request_id"))] += 1
    missing = sorted(answered - logged.keys())
    unexpected = sorted(logged.keys() - answered)
    duplicated = sorted(request_id for request_id, count in logged.items() if count > 1)
    return {
        "directory": str(directory),
        "files": [{"name": p.name, "bytes": p.stat().st_size} for p in files],
        "lines": lines,
        "rows": rows,
        "unreadable_lines": unreadable,
        "answered_not_logged": len(missing),
        "answered_not_logged_examples": missing[:10],
        "logged_not_answered": len(unexpected),
        "logged_not_answered_examples": unexpected[:10],
        "logged_twice": len(duplicated),
        "logged_twice_examples": duplicated[:10],
    }


def logged_times(directory: Path, request_ids: set[str]) -> list[float]:
    """When the predictor answered these requests (epoch seconds), from its log."""
    times = []
    for path in log_files(directory):
        with path.open("rb") as handle:
            for raw in handle:
                document = json.loads(raw)
                if document.get("request_id") in request_ids:
                    times.append(datetime.fromisoformat(document["time"]).timestamp())
    return sorted(times)


def feedback_store_report(
    stack: BenchStack, answered: set[str], log_dir: Path, clock: Clock
) -> dict[str, Any]:
    """How many answered requests the predictor kept in Redis for POST /feedback (best effort
    by design: a Redis outage drops them, counted in iris_prediction_store_failures_total)."""
    namespace = stack.stack_env().get("JOBS_NAMESPACE") or DEFAULT_JOBS_NAMESPACE
    keys = FeedbackKeys(namespace)
    with redis.Redis.from_url(stack.redis_url, socket_timeout=30, decode_responses=True) as client:
        kept = set(client.zrange(keys.predictions_index, 0, -1))
    not_kept = answered - kept
    times = logged_times(log_dir, not_kept) if not_kept else []
    return {
        "index": keys.predictions_index,
        "answered": len(answered),
        "kept": len(answered & kept),
        "not_kept": len(not_kept),
        "not_kept_answered_from_s": clock.at(times[0]) if times else None,
        "not_kept_answered_to_s": clock.at(times[-1]) if times else None,
    }


LOG_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|^(Traceback)")
LOG_EXAMPLES = 5


def _log_example(line: str) -> str:
    """A JSON log line as time, logger, message and the exception it ended with."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:300]
    if not isinstance(record, dict):
        return line[:300]
    message = str(record.get("message", "")).strip().splitlines()[:1]
    raised = str(record.get("exc_info") or "").strip().splitlines()[-1:]
    parts = [str(record.get("time")), str(record.get("logger")), *message, *raised]
    return " | ".join(parts)[:300]


def service_log_findings(folders: list[Path]) -> dict[str, Any]:
    """Warnings, errors and tracebacks in every service's log: a defect the counts above
    do not show (a retried write, a swallowed error) usually shows here."""
    findings: dict[str, Any] = {}
    for path in sorted(p for folder in folders for p in folder.glob("*.log")):
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for line in path.read_text(errors="replace").splitlines():
            match = LOG_LEVEL.search(line)
            if match is None:
                continue
            level = match.group(1) or match.group(2)
            counts[level] += 1
            if level != "WARNING" and len(examples) < LOG_EXAMPLES:
                examples.append(_log_example(line))
        if counts:
            findings[path.name] = {"counts": dict(counts), "first_errors": examples}
    return findings


# --- the run ----------------------------------------------------------------------------------


class Soak:
    """The run itself: traffic, jobs, moves, the Redis restart and memory, on one clock that
    starts with the traffic."""

    def __init__(self, stack: BenchStack, window_s: float) -> None:
        self.stack = stack
        self.window_s = window_s
        self.clock = Clock()
        self.timeline = Timeline(self.clock)
        self.traffic = Traffic(stack.gateway_url, self.clock)
        self.jobs = JobDesk(stack, self.timeline)
        self.memory = MemoryWatch(stack, self.clock)
        self.moves: list[AliasMove] = []
        self.redis_restart: dict[str, Any] | None = None
        self.hostile: dict[str, Any] = {}
        self._hostile_threads: list[threading.Thread] = []

    def run(self) -> dict[str, Any]:
        original = self.stack.production_version()
        self.hostile["redis_before"] = self._redis_memory()
        self.traffic.start()
        self.timeline.add(f"traffic started; warm-up {WARMUP_S:g} s, then {self.window_s:g} s")
        time.sleep(WARMUP_S)
        memory_start = self.memory.sample()
        self.memory.start()
        self.jobs.start()
        window_start = self.clock()
        self.timeline.add("warm-up over: memory sampled, schedule started")
        try:
            self._schedule(original, window_start, window_start + self.window_s)
        finally:
            self.traffic.stop()
            traffic_end = self.clock()
            self.timeline.add("traffic stopped")
            memory_end = self.memory.sample()
            self.memory.stop()
        for thread in self._hostile_threads:
            thread.join()
        self.hostile["redis_after"] = self._redis_memory()
        self._wait_for_jobs(traffic_end + JOB_GRACE_S)
        self.jobs.stop()
        predictor_stop = stop_predictor(self.stack)
        self.timeline.add(f"predictor stopped in {predictor_stop['seconds']} s")
        log_dir = Path(self.stack.stack_env()["PREDICTOR_PREDICTION_LOG_DIR"])
        flood = self.hostile.get("flood", {})
        answered = self.traffic.answered_ids() | set(flood.pop("answered_ids", []))
        prediction_log = read_prediction_log(log_dir, answered)
        feedback_store = feedback_store_report(self.stack, answered, log_dir, self.clock)
        time_swaps(self.moves, self.traffic.tallies, traffic_end)
        return {
            "original_version": original,
            "warmup_s": WARMUP_S,
            "window_s": self.window_s,
            "traffic": self.traffic.summary(traffic_end),
            "jobs": [job.as_dict() for job in self.jobs.jobs],
            "alias_moves": [move.as_dict() for move in self.moves],
            "predictor_poll_interval_s": poll_interval_s(self.stack),
            "redis_restart": self.redis_restart,
            "hostile": self.hostile,
            "store_max_bytes": STORE_MAX_BYTES,
            "memory": memory_report(memory_start, memory_end, self.memory),
            "predictor_stop": predictor_stop,
            "prediction_log": prediction_log,
            "feedback_store": feedback_store,
            "service_logs": service_log_findings([self.stack.logs, self.stack.state / "logs"]),
            "timeline": self.timeline.events,
        }

    def _schedule(self, original: str, start: float, end: float) -> None:
        def at(share: float) -> float:
            return start + share * self.window_s

        first: TrackedJob | None = None
        last: TrackedJob | None = None
        while self.clock() < end:
            now = self.clock()
            if first is None and now >= at(FIRST_JOB_AT):
                first = self.jobs.submit("A", end)
                self.jobs.replay(first)
            if first is not None and not self.moves and now < end - MOVE_MARGIN_S:
                version = (first.registered.get(MODEL_NAME) or {}).get("version")
                if first.status == "succeeded" and version:
                    self.moves.append(promote(self.stack, self.timeline, str(version), "to A's"))
            if "slow_clients" not in self.hostile and now >= at(SLOW_CLIENTS_AT):
                self._in_background("slow_clients", hostile.trickling_uploads)
            if "flood" not in self.hostile and now >= at(FLOOD_AT):
                self._in_background(
                    "flood", lambda url: hostile.anonymous_flood(url, FLOOD_BATCHES)
                )
            if self.redis_restart is None and now >= at(REDIS_RESTART_AT):
                self.redis_restart = self._restart_redis_under_jobs(end)
            if last is None and now >= at(LAST_JOB_AT):
                last = self.jobs.submit("D", end)
            if (
                len(self.moves) == 1
                and now >= max(at(PROMOTE_BACK_AT), self.moves[0].requested_s + MOVE_MARGIN_S)
                and now < end - MOVE_MARGIN_S
            ):
                self.moves.append(promote(self.stack, self.timeline, original, "back to original"))
            time.sleep(0.2)

    def _in_background(self, phase: str, run: Any) -> None:
        """Run a hostile phase against the gateway beside the traffic; its report lands in
        `self.hostile[phase]`."""
        self.hostile[phase] = {"started_s": self.timeline.add(f"{phase} started")}

        def report() -> None:
            self.hostile[phase] |= run(self.stack.gateway_url)
            self.timeline.add(f"{phase} over")

        thread = threading.Thread(target=report, name=phase, daemon=True)
        thread.start()
        self._hostile_threads.append(thread)

    def _redis_memory(self) -> dict[str, Any]:
        namespace = self.stack.stack_env().get("JOBS_NAMESPACE") or DEFAULT_JOBS_NAMESPACE
        with redis.Redis.from_url(self.stack.redis_url, socket_timeout=10) as client:
            return hostile.redis_memory(client, namespace)

    def _restart_redis_under_jobs(self, end: float) -> dict[str, Any]:
        """Restart Redis while job B runs and job C waits in the queue behind it."""
        running = self.jobs.submit("B", end)
        deadline = self.clock() + RUNNING_WAIT_S
        while running.status == "queued" and self.clock() < deadline:
            time.sleep(0.2)
        waiting = self.jobs.submit("C", end)
        time.sleep(1.0)  # past the AOF's one-second fsync: C's record is on disk
        states = {job.label: job.status for job in self.jobs.jobs}
        stopped_at = self.timeline.add(f"Redis: SIGTERM (jobs: {states})")
        timings = self.stack.restart_redis()
        self.timeline.add(f"Redis answering again after {timings['down_s']} s")
        with redis.Redis.from_url(self.stack.redis_url, socket_timeout=5) as client:
            appendonly = client.config_get("appendonly").get("appendonly")
        replays = [self.jobs.replay(job) for job in (running, waiting) if job.job_id]
        return {
            **timings,
            "stopped_at_s": stopped_at,
            "appendonly": appendonly,
            "job_status_at_stop": states,
            "running_job": running.label,
            "queued_job": waiting.label,
            "key_replays_after": replays,
        }

    def _wait_for_jobs(self, deadline: float) -> None:
        if not self.jobs.all_ended():
            self.timeline.add(f"waiting up to {deadline - self.clock():.0f} s for the jobs")
        while not self.jobs.all_ended() and self.clock() < deadline:
            time.sleep(1.0)


def checks(soak: dict[str, Any]) -> list[dict[str, Any]]:
    traffic, log = soak["traffic"], soak["prediction_log"]
    jobs = [job for job in soak["jobs"] if job["job_id"] is not None]
    lost = [job["label"] for job in jobs if job["lost"]]
    crashed = traffic["crashed_clients"]
    slow, flood = soak["hostile"].get("slow_clients", {}), soak["hostile"].get("flood", {})
    after = soak["hostile"].get("redis_after", {})
    flood_answers = soak["hostile"].get("flood", {}).get("outcomes", {}).get("200", 0)
    answered_200 = traffic["answered_200"] + flood_answers
    rows_answered = traffic["rows_answered"] + soak["hostile"].get("flood", {}).get(
        "rows_answered", 0
    )
    log_matches = (
        log["lines"] == answered_200
        and log["rows"] == rows_answered
        and log["answered_not_logged"] == 0
        and log["logged_not_answered"] == 0
        and log["logged_twice"] == 0
    )
    return [
        {
            "check": "Failed predictions (non-200 answers and transport errors)",
            "target": "0",
            "measured": f"{traffic['failed']:,} of {traffic['requests']:,}"
            + (f"; {len(crashed)} client thread(s) crashed" if crashed else ""),
            "met": traffic["failed"] == 0 and not crashed,
        },
        {
            "check": "Lost retrain jobs (404 after the 202, or no end within the run + "
            f"{JOB_GRACE_S:g} s)",
            "target": "0",
            "measured": f"{len(lost)} of {len(jobs)}" + (f": {', '.join(lost)}" if lost else ""),
            "met": not lost and bool(jobs),
        },
        {
            "check": f"Trickling uploads ({hostile.TRICKLING_CONNECTIONS:,}): each answered 408",
            "target": "all",
            "measured": f"{slow.get('answered_408', 0):,} of {slow.get('connections', 0):,}"
            f" ({slow.get('outcomes', {})})",
            "met": bool(slow) and slow.get("answered_408") == slow.get("connections"),
        },
        {
            "check": "Anonymous flood: bytes of kept answers within PREDICTOR_STORE_MAX_BYTES",
            "target": f"<= {soak['store_max_bytes']:,}",
            "measured": f"{after.get('kept_answer_bytes', 0):,} after "
            f"{flood.get('batches', 0)} batches of {hostile.FLOOD_BATCH_ROWS:,} rows "
            f"({flood.get('outcomes', {})})",
            "met": bool(flood) and after.get("kept_answer_bytes", 0) <= soak["store_max_bytes"],
        },
        {
            "check": "Prediction log: lines = requests answered 200, rows = rows answered "
            "(traffic and flood)",
            "target": "equal",
            "measured": f"{log['lines']:,} lines / {answered_200:,} answers; "
            f"{log['rows']:,} rows / {rows_answered:,} rows",
            "met": log_matches,
        },
    ]


# --- the report -------------------------------------------------------------------------------


def _columns(columns: dict[str, str], entries: list[dict[str, Any]]) -> list[str]:
    """A table with one row per entry: header → the entry's key."""
    return _table(
        list(columns), [[entry.get(key) for key in columns.values()] for entry in entries]
    )


TRAFFIC_COLUMNS = {
    "Request": "request",
    "Clients": "clients",
    "Requests": "requests",
    "200": "answered_200",
    "Rows answered": "rows_answered",
    "Failed": "failed",
    "req/s": "requests_per_s",
    "p50 ms": "p50",
    "p99 ms": "p99",
    "max ms": "max",
}
JOB_COLUMNS = {
    "Job": "label",
    "Id": "short_id",
    "Submitted s": "submitted_s",
    "Final status": "final_status",
    "Took s": "seconds",
    "404s": "not_found_answers",
    "503s (Redis down)": "unavailable_answers",
    "Deliveries": "deliveries",
    "Same key sent again": "replayed",
}
MOVE_COLUMNS = {
    "Move": "label",
    "Version": "to_version",
    "From": "previous_version",
    "Sent at s": "requested_s",
    "POST /promote": "promote_answer",
    "First answer naming it, s after": "first_new_answer_after_s",
    "All answers name it, s after": "all_new_answers_after_s",
}
MEMORY_COLUMNS = {
    "Service": "service",
    "RSS start MiB": "rss_start",
    "RSS end MiB": "rss_end",
    "Growth MiB": "rss_growth_mib",
    "Growth %": "rss_growth_pct",
    "Peak RSS MiB": "peak_rss_mib",
    "PSS growth MiB": "pss_growth_mib",
    "Processes replaced": "processes_replaced",
}


def traffic_section(traffic: dict[str, Any]) -> list[str]:
    kinds = [{**k, **k["latency_ms"]} for k in traffic["by_kind"].values()]
    lines = [
        *_columns(TRAFFIC_COLUMNS, kinds),
        "",
        f"{traffic['seconds']:g} s of traffic, one request at a time per client thread. "
        f"Failures: {traffic['failures'] or 'none'}. Answers per model version: "
        f"{traffic['answers_per_model_version']}.",
    ]
    if traffic["failure_samples"]:
        lines += ["", "First failures:", ""]
        lines += [
            f"- {s['t']:.1f} s, {s['kind']}, {s['failure']}, `{s['request_id']}`: {s['detail']}"
            for s in traffic["failure_samples"]
        ]
    return lines


def jobs_section(jobs: list[dict[str, Any]]) -> list[str]:
    def replayed(job: dict[str, Any]) -> str:
        answers = (
            f"{r['answer']} {'same job' if r['same_job'] else 'ANOTHER JOB'}"
            for r in job["replays"]
        )
        return ", ".join(answers) or "-"

    entries = [
        {**j, "short_id": (j["job_id"] or "not accepted")[:8], "replayed": replayed(j)}
        for j in jobs
    ]
    errors = [f"- {j['label']}: {j['error']}" for j in jobs if j["error"]]
    return [*_columns(JOB_COLUMNS, entries), *(["", "Job errors:", "", *errors] if errors else [])]


def moves_section(soak: dict[str, Any]) -> list[str]:
    if not soak["alias_moves"]:
        return ["No move: the first job did not register a version in time."]
    return [
        *_columns(MOVE_COLUMNS, soak["alias_moves"]),
        "",
        "Seconds after `POST /promote` was sent, seen in the traffic's own answers "
        f"(predictor alias poll interval {soak['predictor_poll_interval_s']:g} s).",
    ]


def redis_section(restart: dict[str, Any] | None) -> list[str]:
    if not restart:
        return ["Not done (the run ended first)."]
    states = restart["job_status_at_stop"]
    running, queued = restart["running_job"], restart["queued_job"]
    return [
        f"SIGTERM at {restart['stopped_at_s']:.1f} s, job {running} {states.get(running)} and "
        f"job {queued} {states.get(queued)}: exited (code {restart['exit_code']}) in "
        f"{restart['stop_s']:.2f} s, answered again {restart['start_s']:.2f} s after that "
        f"({restart['down_s']:.2f} s down in all); appendonly {restart['appendonly']}."
    ]


def hostile_section(soak: dict[str, Any]) -> list[str]:
    hostile_run = soak["hostile"]
    before, after = hostile_run.get("redis_before", {}), hostile_run.get("redis_after", {})
    slow, flood = hostile_run.get("slow_clients", {}), hostile_run.get("flood", {})
    mib = 1024 * 1024
    return [
        f"- Trickling uploads: {slow.get('connections', 0):,} connections at "
        f"{slow.get('started_s', 0):.1f} s, answered {slow.get('outcomes', {})} within "
        f"{slow.get('seconds', 0)} s.",
        f"- Anonymous flood: {flood.get('batches', 0)} batches of "
        f"{flood.get('rows_each', 0):,} rows at {flood.get('started_s', 0):.1f} s, answered "
        f"{flood.get('outcomes', {})} in {flood.get('seconds', 0)} s.",
        f"- Redis memory: {before.get('used_memory', 0) / mib:.1f} MiB before the traffic, "
        f"{after.get('used_memory', 0) / mib:.1f} MiB after (cap "
        f"{after.get('maxmemory', 0) / mib:.0f} MiB, policy {after.get('maxmemory_policy')}); "
        f"kept answers {after.get('kept_answer_bytes', 0) / mib:.1f} MiB of a "
        f"{soak['store_max_bytes'] / mib:.0f} MiB budget.",
    ]


def memory_section(memory: dict[str, Any]) -> list[str]:
    entries = [
        {
            **m,
            "service": name,
            "rss_start": (m["start"] or {}).get("rss_mib"),
            "rss_end": (m["end"] or {}).get("rss_mib"),
        }
        for name, m in memory["services"].items()
    ]
    series = memory["rss_mib_series"]
    # A handful of samples spread over the run, to tell a plateau from a climb.
    picked = series[:: max(1, len(series) // 8)]
    trend = [
        f"- {name}: " + ", ".join(f"{_cell(s[name])} ({s['t']:.0f} s)" for s in picked)
        for name in SERVICES
    ]
    return [
        *_columns(MEMORY_COLUMNS, entries),
        "",
        f"RSS and PSS summed over each service's process tree, at {memory['start_s']:.0f} s "
        f"(after the warm-up) and {memory['end_s']:.0f} s (traffic stopped). RSS over time:",
        "",
        *trend,
    ]


def feedback_section(soak: dict[str, Any]) -> list[str]:
    store = soak["feedback_store"]
    line = (
        f"The predictor keeps each answered request in Redis (`{store['index']}`) for the "
        f"gateway's POST /feedback: {store['kept']:,} of {store['answered']:,} kept."
    )
    if store["not_kept"]:
        line += (
            f" The {store['not_kept']:,} not kept were answered between "
            f"{store['not_kept_answered_from_s']:.2f} s and {store['not_kept_answered_to_s']:.2f} s"
        )
        restart = soak["redis_restart"]
        if restart:
            line += f" (Redis stopped at {restart['stopped_at_s']:.2f} s for {restart['down_s']} s)"
        line += "."
    return [line]


def logs_section(findings: dict[str, Any]) -> list[str]:
    if not findings:
        return ["No warning, error or traceback in any service's log."]
    lines = [
        f"- `{name}`: " + ", ".join(f"{level} {count}" for level, count in f["counts"].items())
        for name, f in findings.items()
    ]
    examples = [f"    {line}" for f in findings.values() for line in f["first_errors"]]
    return [*lines, *(["", "First errors:", "", *examples] if examples else [])]


def log_section(soak: dict[str, Any]) -> list[str]:
    log, traffic, stop = soak["prediction_log"], soak["traffic"], soak["predictor_stop"]
    return [
        f"After a graceful stop of the predictor ({stop['seconds']} s, "
        f"{'SIGKILLed' if stop['killed'] else 'no SIGKILL'}): {log['lines']:,} lines holding "
        f"{log['rows']:,} rows in {len(log['files'])} file(s), for {traffic['answered_200']:,} "
        f"requests answered 200 holding {traffic['rows_answered']:,} rows. Answered but not "
        f"logged: {log['answered_not_logged']}; logged but not answered 200: "
        f"{log['logged_not_answered']}; logged twice: {log['logged_twice']}; unreadable "
        f"lines: {log['unreadable_lines']}."
    ]


def markdown(results: dict[str, Any]) -> str:
    soak = results["soak"]
    checks_table = _columns(
        {"Check": "check", "Target": "target", "Measured": "measured", "Met": "mark"},
        [{**c, "mark": "✅" if c["met"] else "❌"} for c in results["checks"]],
    )
    held = sum(check["met"] for check in results["checks"])
    sections = {
        "Traffic through the gateway": traffic_section(soak["traffic"]),
        "Retrain jobs": jobs_section(soak["jobs"]),
        "Alias moves": moves_section(soak),
        "Redis restart": redis_section(soak["redis_restart"]),
        "Hostile clients and Redis memory": hostile_section(soak),
        "Memory": memory_section(soak["memory"]),
        "Prediction log": log_section(soak),
        "Predictions kept for feedback (reported, not judged)": feedback_section(soak),
        "Service logs": logs_section(soak["service_logs"]),
        "Timeline": [f"- {e['t']:.1f} s: {e['event']}" for e in soak["timeline"]],
    }
    lines = [
        "# `make soak` results",
        "",
        f"Written by `bench/soak.py`; every figure is also in `{Path(results['output']).name}`. "
        f"Times are seconds since the traffic started (a {soak['warmup_s']:g} s warm-up, then "
        f"the {soak['window_s']:g} s run).",
        "",
        "## Must hold",
        "",
        *checks_table,
        "",
        f"{held} of {len(results['checks'])} held. {provenance(results)}",
    ]
    for title, body in sections.items():
        lines += ["", f"## {title}", "", *body]
    lines += ["", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def provenance(results: dict[str, Any]) -> str:
    git, host = results["git"], results["machine"]
    commit = git["commit"][:10] + (" with uncommitted changes" if git["dirty"] else "")
    return (
        f"Measured {results['timestamp']} on commit {commit}, {host['cores']} cores "
        f"({host['cpu']}), in {results['elapsed_s'] / 60:.1f} min."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the run (5)")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="results JSON; the Markdown summary goes beside it (.md)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"python -m bench.soak --minutes {args.minutes:g}",
        "output": str(args.output),
        "git": git_commit(),
        "load_average": {"before": load_average()},
    }
    work = Path(tempfile.mkdtemp(prefix="iris-soak-"))
    say(f"state and logs in {work}")
    stack = BenchStack.prepare(work)
    os.environ["PREDICTOR_PREDICTION_LOG_BACKUP_COUNT"] = LOG_BACKUP_COUNT
    os.environ["PREDICTOR_STORE_MAX_BYTES"] = str(STORE_MAX_BYTES)
    held = False
    try:
        say("starting the soak stack (durable Redis, then scripts/stack.py up)")
        stack.start_redis(durable=True)
        stack.up()
        results["soak"] = Soak(stack, args.minutes * 60).run()
        results["checks"] = checks(results["soak"])
        held = all(check["met"] for check in results["checks"])
    finally:
        say("stopping the soak stack")
        stack.down()
        if held and not os.environ.get("BENCH_KEEP_STATE"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work} (logs in {work / 'logs'} and {work / 'state' / 'logs'})")
    results["load_average"]["after"] = load_average()
    results.update(elapsed_s=round(time.monotonic() - started, 1), machine=machine())
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    summary = args.output.with_suffix(".md")
    summary.write_text(markdown(results))
    print(summary.read_text())
    say(f"wrote {args.output} and {summary}; {'all held' if held else 'A MUST-HOLD FAILED'}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
