"""The phases that run beside or after the load: a hot swap under load, retrain jobs (timed by
stage, or followed through a soak), alias moves, a Redis restart under jobs, trickling uploads
and a flood of anonymous batches.

Every hostile phase runs beside ordinary traffic, which must not notice it: trickling uploads
must each end in a 408 without holding a request slot, and the flood's answers kept for
feedback must stay within the predictor's byte budget, which Redis's memory before and after
shows.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis

from bench.console import Clock, Every, say
from bench.loads import FLOWER, Target, WrkResult, run_wrk
from iris_devstack.private_stack import PrivateStack
from iris_predictor.config import PredictorSettings
from iris_shared.jobs import TrainingStage


def poll_interval_s(stack: PrivateStack) -> float:
    """The alias poll interval the stack's predictor runs with (environment, .env, default)."""
    configured = stack.stack_env().get("PREDICTOR_POLL_INTERVAL_S")
    return float(configured or PredictorSettings.model_fields["poll_interval_s"].default)


# --- hot swap under load ------------------------------------------------------------------------

MOVE_AFTER_S = 3.0
POLL_EVERY_S = 0.05
# With several worker processes each swaps on its own; polls on fresh connections land on
# whichever worker accepts, so a run of answers all naming the new version stands for "all".
CONSECUTIVE_NEW_ANSWERS = 10


@dataclass
class SwapOutcome:
    from_version: str
    to_version: str
    load: WrkResult
    predictor_poll_interval_s: float
    first_new_answer_s: float | None
    all_new_answers_s: float | None
    polls: int
    failed_polls: int

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self) | {"load": self.load.as_dict(), "failed_requests": self.load.failed}
        return record | {
            "alias_moved_after_load_start_s": MOVE_AFTER_S,
            "consecutive_answers_required": CONSECUTIVE_NEW_ANSWERS,
        }


def served_version(url: str) -> str | None:
    try:
        # A new connection per poll (no shared client), so polls reach every worker process.
        response = httpx.get(url, timeout=2)
        return str(response.json()["version"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def hot_swap_under_load(
    stack: PrivateStack, gateway: Target, to_version: str, poll_interval: float, connections: int
) -> SwapOutcome:
    """wrk drives the gateway while `production` moves to `to_version`; the predictor's
    GET /model is polled to see when every answer names it."""
    from_version = stack.production_version()
    give_up_after_s = 3 * poll_interval + 5
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(run_wrk, gateway, MOVE_AFTER_S + 2 * poll_interval + 4, connections)
        time.sleep(MOVE_AFTER_S)
        stack.move_production_alias(to_version)
        moved = time.monotonic()
        say(f"moved production {from_version} -> {to_version} under load")
        first_new: float | None = None
        streak_start: float | None = None
        streak = polls = failed_polls = 0
        while time.monotonic() - moved < give_up_after_s:
            version = served_version(f"{stack.predictor_url}/model")
            # Timed on the answer, not the question: the conservative end of the interval.
            answered = time.monotonic() - moved
            polls += 1
            failed_polls += version is None
            if version == to_version:
                first_new = answered if first_new is None else first_new
                streak_start = answered if streak == 0 else streak_start
                streak += 1
                if streak >= CONSECUTIVE_NEW_ANSWERS:
                    break
            else:
                streak = 0
            time.sleep(POLL_EVERY_S)
        result = load.result()
    all_new = streak_start if streak >= CONSECUTIVE_NEW_ANSWERS else None
    return SwapOutcome(
        from_version,
        to_version,
        result,
        poll_interval,
        first_new_answer_s=None if first_new is None else round(first_new, 3),
        all_new_answers_s=None if all_new is None else round(all_new, 3),
        polls=polls,
        failed_polls=failed_polls,
    )


# --- a retrain timed by stage -------------------------------------------------------------------

RETRAIN_POLL_EVERY_S = 0.1
RETRAIN_TIMEOUT_S = 900.0
FINISHED = {"succeeded", "failed"}


def _phase(job: dict[str, Any]) -> tuple[str, str | None]:
    progress = job.get("progress") or {}
    if job.get("status") == "running" and progress.get("stage"):
        return str(progress["stage"]), progress.get("model_name")
    return str(job.get("status")), None


def retrain_breakdown(stack: PrivateStack) -> dict[str, Any]:
    """Where a retrain's seconds go: a job submitted through the gateway, its progress polled.

    Polling sees each stage (iris_shared.jobs.TrainingStage) it catches; a stage shorter than
    the interval is missed and its time falls to the one before. MLflow logging, registration
    and the promotion gate all happen under `registering`. When the job's result carries its
    own `stage_seconds`, those exact figures are used instead.
    """
    headers = {"Authorization": f"Bearer {stack.token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=10) as client:
        submitted = time.monotonic()
        accepted = client.post("/retrain")
        accepted.raise_for_status()
        job_id = accepted.json()["job_id"]
        phases: list[tuple[float, tuple[str, str | None]]] = []
        job: dict[str, Any] = {}
        while time.monotonic() - submitted < RETRAIN_TIMEOUT_S:
            job = client.get(f"/jobs/{job_id}").json()
            now = time.monotonic() - submitted
            if not phases or phases[-1][1] != _phase(job):
                phases.append((now, _phase(job)))
            if job.get("status") in FINISHED:
                break
            time.sleep(RETRAIN_POLL_EVERY_S)
    total = phases[-1][0] if phases else None
    durations = [(name, model, round(b - a, 3)) for (a, (name, model)), (b, _) in pairwise(phases)]
    steps = [{"phase": name, "model": model, "seconds": s} for name, model, s in durations]
    polled: dict[str, float] = defaultdict(float)
    for name, _, seconds in durations:
        polled[name] += seconds
    reported = (job.get("result") or {}).get("stage_seconds") or None
    polled_stages = {stage.value: round(polled.get(stage.value, 0.0), 3) for stage in TrainingStage}
    return {
        "job_id": job_id,
        "status": job.get("status"),
        "job_error": job.get("error"),
        "total_s": None if total is None else round(total, 2),
        "queued_s": round(polled.get("queued", 0.0), 3),
        # Running with no stage reported: before the first stage, or between attempts.
        "no_stage_s": round(polled.get("running", 0.0), 3),
        "stage_seconds": reported or polled_stages,
        "stage_seconds_source": "job result" if reported else "polling",
        "reported_stage_seconds": reported,
        "polled_stage_seconds": polled_stages,
        "poll_interval_s": RETRAIN_POLL_EVERY_S,
        "steps": steps,
        "job": job,
    }


# --- retrain jobs followed through a soak --------------------------------------------------------

JOB_POLL_EVERY_S = 0.5
SUBMIT_RETRY_S = 3.0


@dataclass
class TrackedJob:
    label: str
    idempotency_key: str
    submitted_s: float
    job_id: str | None = None
    submit_answers: list[str] = field(default_factory=list)
    replays: list[dict[str, Any]] = field(default_factory=list)
    final_status: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    not_found_answers: int = 0
    not_found_at_s: list[float] = field(default_factory=list)
    unavailable_answers: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)
    ended_s: float | None = None
    error: str | None = None
    deliveries: int | None = None
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.final_status in FINISHED

    @property
    def lost(self) -> bool:
        return self.job_id is not None and (self.not_found_answers > 0 or not self.ended)

    def as_dict(self) -> dict[str, Any]:
        took = None if self.ended_s is None else round(self.ended_s - self.submitted_s, 1)
        return asdict(self) | {
            "seconds": took,
            "lost": self.lost,
            "poll_errors": dict(self.poll_errors),
        }


class JobDesk(Every):
    """Submits retrain jobs through the gateway and polls each one until it ends."""

    def __init__(self, stack: PrivateStack, clock: Clock) -> None:
        super().__init__(JOB_POLL_EVERY_S, "soak-jobs")
        self.url = stack.gateway_url
        self.headers = {"Authorization": f"Bearer {stack.token}"}
        self.clock = clock
        self.run = secrets.token_hex(4)
        self.jobs: list[TrackedJob] = []
        self.lock = threading.Lock()
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=10)

    def _post_retrain(self, key: str) -> tuple[str, dict[str, Any] | None]:
        headers = {**self.headers, "Idempotency-Key": key}
        try:
            response = httpx.post(f"{self.url}/retrain", headers=headers, timeout=15)
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
                job.job_id, job.final_status = str(body["job_id"]), str(body["status"])
                self.clock.add(f"job {label} submitted: {answer}, {job.job_id}")
                return job
            if self.clock() > give_up_s:
                self.clock.add(f"job {label} not accepted: {job.submit_answers}")
                return job
            time.sleep(SUBMIT_RETRY_S)

    def replay(self, job: TrackedJob) -> dict[str, Any]:
        """Send the job's Idempotency-Key again: the answer must be 200 and the same job."""
        answer, body = self._post_retrain(job.idempotency_key)
        job_id = None if body is None else str(body["job_id"])
        now = self.clock()
        same_job = job_id == job.job_id and answer == "200"
        replay = {"t": now, "answer": answer, "job_id": job_id, "same_job": same_job}
        job.replays.append(replay)
        if answer == "202" and job_id is not None:
            # The key was forgotten and a second job started: follow it as well.
            extra = TrackedJob(f"{job.label} again", job.idempotency_key, now, job_id)
            with self.lock:
                self.jobs.append(extra)
        return replay

    def stop(self) -> None:
        super().stop()
        self.client.close()

    def all_ended(self) -> bool:
        with self.lock:
            return all(job.ended for job in self.jobs if job.job_id is not None)

    def tick(self) -> None:
        with self.lock:
            open_jobs = [j for j in self.jobs if j.job_id is not None and not j.ended]
        for job in open_jobs:
            self._poll(job)

    def _poll(self, job: TrackedJob) -> None:
        try:
            response = self.client.get(f"/jobs/{job.job_id}")
        except httpx.HTTPError as exc:
            job.poll_errors[type(exc).__name__] += 1
            return
        now = self.clock()
        if response.status_code == 404:
            job.not_found_answers += 1
            if len(job.not_found_at_s) < 10:
                job.not_found_at_s.append(now)
            self.clock.add(f"job {job.label} answered 404")
            return
        if response.status_code == 503:
            job.unavailable_answers += 1
            return
        if response.status_code != 200:
            job.poll_errors[f"HTTP {response.status_code}"] += 1
            return
        record = response.json()
        progress = record.get("progress") or {}
        step = {"status": record["status"], "stage": progress.get("stage")}
        step["model"] = progress.get("model_name")
        last = job.history[-1] if job.history else {}
        if {k: last.get(k) for k in step} != step:
            job.history.append({"t": now, **step})
        job.final_status, job.deliveries = record["status"], record.get("deliveries")
        if job.ended:
            job.ended_s, job.error = now, record.get("error")
            models = (record.get("result") or {}).get("models") or {}
            job.registered = {
                name: {"version": m.get("version"), "gate": m.get("gate")}
                for name, m in models.items()
            }
            self.clock.add(
                f"job {job.label} {job.final_status} after {now - job.submitted_s:.1f} s"
            )

    def wait(self, deadline: float) -> None:
        if not self.all_ended():
            self.clock.add(f"waiting up to {deadline - self.clock():.0f} s for the jobs")
        while not self.all_ended() and self.clock() < deadline:
            time.sleep(1.0)


# --- alias moves --------------------------------------------------------------------------------


@dataclass
class AliasMove:
    label: str
    to_version: str
    requested_s: float
    promote_seconds: float | None = None
    promote_answer: str | None = None
    previous_version: str | None = None
    first_new_answer_after_s: float | None = None
    all_new_answers_after_s: float | None = None


def promote(stack: PrivateStack, clock: Clock, version: str, label: str) -> AliasMove:
    move = AliasMove(label, version, clock())
    try:
        response = httpx.post(
            f"{stack.gateway_url}/promote",
            headers={"Authorization": f"Bearer {stack.token}"},
            json={"model_version": version},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        move.promote_answer = type(exc).__name__
    else:
        move.promote_answer = str(response.status_code)
        if response.status_code == 200:
            move.previous_version = response.json().get("previous_version")
    move.promote_seconds = round(clock() - move.requested_s, 3)
    clock.add(f"POST /promote {label} (version {version}): {move.promote_answer}")
    return move


def time_swaps(
    moves: list[AliasMove], switches: list[list[tuple[float, str]]], end_s: float
) -> None:
    """When the clients' answers first named each move's version, and when all of them did
    from then on, from each client's (time, version) switches; seconds after the promotion
    was sent (the alias moves before it answers)."""
    for index, move in enumerate(moves):
        start = move.requested_s
        end = moves[index + 1].requested_s if index + 1 < len(moves) else end_s
        firsts: list[float] = []
        settled: list[float] = []
        all_settled = True
        for client in switches:
            before = [v for t, v in client if t < start]
            inside = [(t, v) for t, v in client if start <= t < end]
            new = [t for t, v in inside if v == move.to_version]
            firsts += new[:1]
            final = inside[-1][1] if inside else (before[-1] if before else None)
            all_settled &= final == move.to_version
            settled.append(new[-1] if new else start)
        if firsts:
            move.first_new_answer_after_s = round(min(firsts) - start, 3)
        if all_settled and settled:
            move.all_new_answers_after_s = round(max(settled) - start, 3)


# --- Redis --------------------------------------------------------------------------------------

RUNNING_WAIT_S = 30.0


def restart_redis_under_jobs(stack: PrivateStack, desk: JobDesk, end: float) -> dict[str, Any]:
    """Stop Redis with SIGTERM and start it on the same folder while job B runs and job C waits
    in the queue behind it; then send both Idempotency-Keys again."""
    running = desk.submit("B", end)
    deadline = desk.clock() + RUNNING_WAIT_S
    while running.final_status == "queued" and desk.clock() < deadline:
        time.sleep(0.2)
    waiting = desk.submit("C", end)
    time.sleep(1.0)  # past the AOF's one-second fsync: C's record is on disk
    states = {job.label: job.final_status for job in desk.jobs}
    stopped_at = desk.clock.add(f"Redis: SIGTERM (jobs: {states})")
    timings = stack.restart_redis()
    desk.clock.add(f"Redis answering again after {timings['down_s']} s")
    with redis.Redis.from_url(stack.redis_url, socket_timeout=5) as client:
        appendonly = client.config_get("appendonly").get("appendonly")
    replays = [desk.replay(job) for job in (running, waiting) if job.job_id]
    return {
        **timings,
        "stopped_at_s": stopped_at,
        "appendonly": appendonly,
        "job_status_at_stop": states,
        "running_job": running.label,
        "queued_job": waiting.label,
        "key_replays_after": replays,
    }


# --- hostile clients ----------------------------------------------------------------------------

TRICKLING_CONNECTIONS = 1200
TRICKLE_EVERY_S = 5.0
# The server closes an upload it gave up on (BODY_READ_TIMEOUT_S, 10 s); a byte sent after that
# would make TCP reset the connection and lose the answer, so the last goes well before.
LAST_TRICKLE_S = 8.0
FLOOD_BATCH_ROWS = 10_000
FLOOD_CONCURRENCY = 4


def trickling_uploads(
    url: str, connections: int = TRICKLING_CONNECTIONS, answer_within_s: float = 30.0
) -> dict[str, Any]:
    """Open `connections` uploads to POST /predict that send one byte every 5 s; the status
    each was answered with before the server closed it, and how long that took."""
    parts = urlsplit(url)

    async def upload() -> str:
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        except OSError as exc:
            return f"connect: {type(exc).__name__}"
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        opened = time.monotonic()
        try:
            read = asyncio.ensure_future(reader.read())
            while not read.done():
                await asyncio.wait([read], timeout=TRICKLE_EVERY_S)
                if not read.done() and time.monotonic() - opened < LAST_TRICKLE_S:
                    writer.write(b" ")
            answer = read.result()
        except (OSError, asyncio.IncompleteReadError) as exc:
            return f"transport: {type(exc).__name__}"
        finally:
            writer.close()
        head = answer.split(b"\r\n", 1)[0].split()
        return head[1].decode() if len(head) > 1 else "closed without an answer"

    async def all_uploads() -> list[str]:
        uploads = asyncio.gather(*(upload() for _ in range(connections)))
        return await asyncio.wait_for(uploads, answer_within_s)

    started = time.monotonic()
    try:
        outcomes = Counter(asyncio.run(all_uploads()))
    except TimeoutError:
        outcomes = Counter({f"no answer within {answer_within_s:g} s": connections})
    return {
        "connections": connections,
        "outcomes": dict(outcomes),
        "answered_408": outcomes.get("408", 0),
        "seconds": round(time.monotonic() - started, 1),
    }


def anonymous_flood(url: str, batches: int) -> dict[str, Any]:
    """POST `batches` 10,000-row batches without any credential; their status codes."""
    body = orjson.dumps({"instances": [FLOWER] * FLOOD_BATCH_ROWS})

    def send(_: int) -> tuple[str, str | None]:
        headers = {"Content-Type": "application/json"}
        try:
            response = httpx.post(f"{url}/predict/batch", content=body, headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        answered = response.json()["request_id"] if response.status_code == 200 else None
        return str(response.status_code), answered

    started = time.monotonic()
    with ThreadPoolExecutor(FLOOD_CONCURRENCY) as pool:
        sent = list(pool.map(send, range(batches)))
    answered = [request_id for _, request_id in sent if request_id is not None]
    return {
        "batches": batches,
        "rows_each": FLOOD_BATCH_ROWS,
        "request_bytes_each": len(body),
        "outcomes": dict(Counter(status for status, _ in sent)),
        # Every answered batch is logged like any other request.
        "answered_ids": answered,
        "rows_answered": len(answered) * FLOOD_BATCH_ROWS,
        "seconds": round(time.monotonic() - started, 1),
    }
