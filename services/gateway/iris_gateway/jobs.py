"""Retrain job records in Redis, merged with the state Celery reports for each job.

Why a record of our own: Celery reports an id it has never seen as PENDING forever, so
without one `GET /jobs/<typo>` would answer "queued". A record per job also gives the
submission time and parameters, and a sorted set lists recent jobs.

    iris:job:<id>    hash: submitted_at, parameters (JSON), and once seen: started_at,
                     plus the final outcome (cached so it outlives Celery's result)
    iris:jobs        sorted set: job id → submission time (epoch seconds)

Why the gateway reads Celery's result key (`celery-task-meta-<id>`, JSON) itself instead of
`AsyncResult`: AsyncResult is blocking (it would need a thread per request), and a result
backend in the gateway's Celery app subscribes to a pub/sub channel for every sent task.
The Redis backend's key and JSON shape (status, result, date_done, traceback) have been
stable since Celery 4; the worker runs with `result_extended=True` and JSON serialization.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as redis
from pydantic import ValidationError

from iris_shared.jobs import JobProgress, JobStatus, RetrainRequest, TrainingJob, TrainingResult

logger = logging.getLogger(__name__)

JOB_KEY = "iris:job:{job_id}"
JOBS_INDEX = "iris:jobs"
CELERY_META_KEY = "celery-task-meta-{job_id}"

_RUNNING = {"STARTED", "PROGRESS", "RETRY"}
_FAILED = {"FAILURE", "REVOKED"}
_EXPECTED_FAILURE = "TrainingJobFailed"


class JobStoreUnavailable(Exception):
    """Redis (job records and Celery's broker and results) cannot be reached."""


class JobNotFound(Exception):
    """No job with this id was ever submitted here (or its record expired)."""


@dataclass(frozen=True)
class CeleryState:
    status: str
    meta: Any
    date_done: datetime | None


def _now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def failure_message(meta: Any, status: str) -> str:
    if status == "REVOKED":
        return "The job was cancelled."
    if isinstance(meta, dict) and "exc_type" in meta:
        raw = meta.get("exc_message")
        message = " ".join(map(str, raw)) if isinstance(raw, list | tuple) else str(raw or "")
        if meta["exc_type"] == _EXPECTED_FAILURE:
            return message
        return f"{meta['exc_type']}: {message}" if message else str(meta["exc_type"])
    return "The job failed."


def job_status(celery_status: str) -> JobStatus:
    if celery_status in _RUNNING:
        return JobStatus.running
    if celery_status == "SUCCESS":
        return JobStatus.succeeded
    if celery_status in _FAILED:
        return JobStatus.failed
    return JobStatus.queued


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except redis.RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc

    async def create(self, job_id: str, request: RetrainRequest) -> datetime:
        submitted_at = _now()
        key = JOB_KEY.format(job_id=job_id)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "submitted_at": submitted_at.isoformat(),
                        "parameters": request.model_dump_json(),
                    },
                )
                pipe.expire(key, self.ttl_s)
                pipe.zadd(JOBS_INDEX, {job_id: submitted_at.timestamp()})
                # The index would otherwise keep ids whose records have expired.
                pipe.zremrangebyscore(JOBS_INDEX, "-inf", submitted_at.timestamp() - self.ttl_s)
                await pipe.execute()
        except redis.RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc
        return submitted_at

    async def discard(self, job_id: str) -> None:
        """Forget a job that could not be enqueued."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(JOB_KEY.format(job_id=job_id))
                pipe.zrem(JOBS_INDEX, job_id)
                await pipe.execute()
        except redis.RedisError:
            logger.warning("Unable to discard the record of a job never enqueued", exc_info=True)

    async def get(self, job_id: str) -> TrainingJob:
        try:
            record, raw_meta = await self._read(job_id)
        except redis.RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc
        if not record:
            raise JobNotFound(job_id)
        return await self._merge(job_id, record, raw_meta)

    async def recent(self, limit: int) -> list[TrainingJob]:
        try:
            ids = await self.client.zrevrange(JOBS_INDEX, 0, limit - 1)
            jobs = []
            for job_id in map(str, ids):
                record, raw_meta = await self._read(job_id)
                if record:
                    jobs.append(await self._merge(job_id, record, raw_meta))
        except redis.RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc
        return jobs

    async def _read(self, job_id: str) -> tuple[dict[str, str], str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(JOB_KEY.format(job_id=job_id))
            pipe.get(CELERY_META_KEY.format(job_id=job_id))
            record, raw_meta = await pipe.execute()
        return record, raw_meta

    async def _merge(
        self, job_id: str, record: dict[str, str], raw_meta: str | None
    ) -> TrainingJob:
        state = _celery_state(raw_meta)
        if state is None and "status" in record:
            # Celery's result expired; the outcome cached in the record remains.
            return _from_record(job_id, record)
        status = job_status(state.status) if state else JobStatus.queued
        progress = None
        recorded_start = _parse_time(record.get("started_at"))
        started_at = recorded_start
        if state is not None and state.status == "PROGRESS" and isinstance(state.meta, dict):
            try:
                progress = JobProgress.model_validate(state.meta)
            except ValidationError:
                logger.warning("Ignoring malformed job progress", extra={"job_id": job_id})
        if progress is not None and progress.started_at is not None:
            started_at = progress.started_at
        if status is JobStatus.running and started_at is None:
            # Running, but no progress reported yet: the first sighting is the best estimate.
            started_at = _now()
        if started_at is not None and started_at != recorded_start:
            # Kept so that the start time is still known once progress gives way to the result;
            # the worker's own start time (in progress) replaces a first-sighting estimate.
            await self.client.hset(
                JOB_KEY.format(job_id=job_id), "started_at", started_at.isoformat()
            )
        job = TrainingJob(
            job_id=job_id,
            status=status,
            progress=progress,
            submitted_at=_parse_time(record.get("submitted_at")),
            started_at=started_at,
            finished_at=state.date_done if state and status in _TERMINAL else None,
            parameters=_parameters(record),
        )
        if state is not None and status is JobStatus.succeeded:
            try:
                job.result = TrainingResult.model_validate(state.meta)
            except ValidationError:
                logger.warning("Ignoring malformed job result", extra={"job_id": job_id})
        elif state is not None and status is JobStatus.failed:
            job.error = failure_message(state.meta, state.status)
        if status in _TERMINAL and "status" not in record:
            await self._cache_outcome(job)
        return job

    async def _cache_outcome(self, job: TrainingJob) -> None:
        outcome = {
            "status": job.status.value,
            "outcome": job.model_dump_json(
                include={"result", "error", "started_at", "finished_at"}
            ),
        }
        await self.client.hset(JOB_KEY.format(job_id=job.job_id), mapping=outcome)


_TERMINAL = {JobStatus.succeeded, JobStatus.failed}


def _celery_state(raw: str | None) -> CeleryState | None:
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        logger.warning("Ignoring a Celery result that is not JSON")
        return None
    return CeleryState(
        status=str(meta.get("status", "PENDING")),
        meta=meta.get("result"),
        date_done=_parse_time(meta.get("date_done")),
    )


def _parameters(record: dict[str, str]) -> RetrainRequest | None:
    raw = record.get("parameters")
    if not raw:
        return None
    try:
        return RetrainRequest.model_validate_json(raw)
    except ValidationError:
        return None


def _from_record(job_id: str, record: dict[str, str]) -> TrainingJob:
    outcome = json.loads(record.get("outcome") or "{}")
    return TrainingJob.model_validate(
        {
            **outcome,
            "job_id": job_id,
            "status": record["status"],
            "submitted_at": record.get("submitted_at"),
            "parameters": _parameters(record),
        }
    )
