"""Retrain jobs: accepting one (record, idempotency, cap, publish) and reading their records.

The contract (keys, record fields, statuses) is `iris_shared.jobs`. The gateway writes a job's
record once, when it accepts the job; from then on only the worker writes it, and
`GET /jobs/{id}` only reads it. Acceptance is one Lua script, so that two concurrent POSTs
with the same `Idempotency-Key` get one job and the cap on pending jobs cannot be overrun:

    <ns>:job:<id>              hash: the job's record (expires after GATEWAY_JOB_TTL_S)
    <ns>:jobs                  sorted set: job id -> submission time, for GET /jobs
    <ns>:jobs:pending          sorted set: jobs queued or running (the cap counts these)
    <ns>:idempotency:<sha256>  the job id a client's Idempotency-Key was given (24 h)

The id is fixed before publishing. When the publish fails, the record is marked failed before
the client gets 503: a message that reached the queue all the same finds a failed record,
and the worker does not run it (iris_trainer.job_record).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Final, cast

import redis.asyncio as redis
from celery import Celery
from kombu.exceptions import KombuError
from starlette.concurrency import run_in_threadpool

from iris_gateway.metrics import GatewayMetrics
from iris_shared.http import ServiceError
from iris_shared.jobs import (
    RETRAIN_TASK,
    TERMINAL_STATUSES,
    JobKeys,
    JobStatus,
    RecordField,
    RetrainRequest,
    TrainingJob,
    job_from_record,
    record_fields,
)

logger = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S: Final = 24 * 3600

# KEYS: record, index, pending, and the idempotency key when the client sent one.
# ARGV: job id, now (epoch s), ttl (s), cap, idempotency ttl (s), then record field/value pairs.
# Returns {"accepted", id} | {"existing", id} | {"full", pending count}.
_ACCEPT = """
local record, index, pending, idempotency = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, now, ttl, cap, idem_ttl =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if idempotency then
  local existing = redis.call('GET', idempotency)
  if existing then
    return {'existing', existing}
  end
end
local count = redis.call('ZCARD', pending)
if count >= cap then
  return {'full', tostring(count)}
end
redis.call('HSET', record, unpack(ARGV, 6))
redis.call('EXPIRE', record, ttl)
redis.call('ZADD', index, now, job_id)
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
redis.call('ZADD', pending, now, job_id)
if idempotency then
  redis.call('SET', idempotency, job_id, 'EX', idem_ttl)
end
return {'accepted', job_id}
"""


class JobStoreUnavailable(ServiceError):
    """Redis (job records and Celery's broker) cannot be reached."""

    status_code = 503
    error = "jobs_unavailable"
    retry_after_s = 5

    def __init__(self, reason: str) -> None:
        super().__init__(
            "Retrain jobs are unavailable right now (Redis cannot be reached); retry later."
        )
        self.reason = reason


class JobNotFound(ServiceError):
    """No job with this id was ever submitted here (or its record expired)."""

    status_code = 404
    error = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No retrain job has the id '{job_id}'.")


class TooManyPendingJobs(ServiceError):
    """RETRAIN_MAX_PENDING jobs are queued or running already."""

    status_code = 429
    error = "too_many_pending_jobs"

    def __init__(self, pending: int, retry_after_s: int) -> None:
        super().__init__(
            f"{pending} retrain jobs are queued or running already, the most this deployment "
            "accepts; retry once one has finished.",
            retry_after_s=retry_after_s,
        )


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        celery: Celery,
        keys: JobKeys,
        *,
        ttl_s: int,
        max_pending: int,
        retry_after_s: int,
        metrics: GatewayMetrics,
    ) -> None:
        self.client = client
        self.celery = celery
        self.keys = keys
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._accept = client.register_script(_ACCEPT)

    def unavailable(self, exc: Exception) -> JobStoreUnavailable:
        """The error to raise when Redis failed, counted and logged."""
        self.metrics.upstream_error("redis", "unavailable")
        logger.warning("Redis unavailable", extra={"reason": str(exc)})
        return JobStoreUnavailable(str(exc))

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc

    async def submit(
        self, request: RetrainRequest, idempotency_key: str | None
    ) -> tuple[TrainingJob, bool]:
        """Accept a job and queue it; returns the job and whether it is new.

        A known Idempotency-Key returns its job as it stands, whatever its status.
        """
        job_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        fields = record_fields(
            status=JobStatus.queued,
            submitted_at=now,
            parameters=request,
            deliveries=0,
        )
        idempotency = self.keys.idempotency(idempotency_key) if idempotency_key else ""
        try:
            await self._prune_pending()
            outcome, value = await self._accept(
                keys=[
                    self.keys.record(job_id),
                    self.keys.index,
                    self.keys.pending,
                    # No key rather than an empty one: a Redis user may touch its own keys only.
                    *([idempotency] if idempotency else []),
                ],
                args=[
                    job_id,
                    now.timestamp(),
                    self.ttl_s,
                    self.max_pending,
                    IDEMPOTENCY_TTL_S,
                    *(item for pair in fields.items() for item in pair),
                ],
            )
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc
        if outcome == "existing":
            logger.info("Retrain job already accepted for this Idempotency-Key")
            return await self.get(value), False
        if outcome == "full":
            self.metrics.jobs_refused.inc()
            raise TooManyPendingJobs(int(value), self.retry_after_s)
        await self._publish(job_id, request, idempotency)
        self.metrics.jobs_submitted.inc()
        logger.info("Retrain job queued", extra={"job_id": job_id})
        return job_from_record(job_id, fields), True

    async def _publish(self, job_id: str, request: RetrainRequest, idempotency: str) -> None:
        try:
            # retry=False: a publish that timed out may have reached the queue, and publishing
            # again would train twice.
            await run_in_threadpool(
                self.celery.send_task,
                RETRAIN_TASK,
                kwargs=request.model_dump(),
                task_id=job_id,
                queue=self.keys.queue,
                retry=False,
            )
        except (KombuError, OSError, redis.RedisError) as exc:
            await self._abandon(job_id, idempotency)
            # The broker is the same Redis: answered (and counted) like any job-store outage.
            raise self.unavailable(exc) from exc

    async def _abandon(self, job_id: str, idempotency: str) -> None:
        """Mark a job whose publish failed as failed, so that it never runs."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self.keys.record(job_id),
                    mapping=record_fields(
                        status=JobStatus.failed,
                        finished_at=datetime.now(UTC),
                        error="Not queued: the broker could not be reached; the client was "
                        "answered 503.",
                    ),
                )
                pipe.zrem(self.keys.pending, job_id)
                if idempotency:
                    # The client was told 503: its retry with the same key is a new attempt.
                    pipe.delete(idempotency)
                await pipe.execute()
        except redis.RedisError:
            logger.error(
                "Unable to mark a job whose publish failed; if its message reached the "
                "queue, it will run",
                extra={"job_id": job_id},
                exc_info=True,
            )

    async def _prune_pending(self) -> None:
        """Drop from the pending set the jobs that ended or whose record expired.

        The worker removes a job when it ends; this covers a worker that died between
        writing the outcome and removing it, and records that expired.
        """
        # The client decodes responses: members and fields are str.
        pending = cast(list[str], await self.client.zrange(self.keys.pending, 0, -1))
        if not pending:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in pending:
                pipe.hget(self.keys.record(job_id), RecordField.status.value)
            statuses = await pipe.execute()
        ended = [
            job_id
            for job_id, status in zip(pending, statuses, strict=True)
            if status is None or status in TERMINAL_STATUSES
        ]
        if ended:
            await self.client.zrem(self.keys.pending, *ended)

    async def get(self, job_id: str) -> TrainingJob:
        try:
            record = cast(dict[str, str], await self.client.hgetall(self.keys.record(job_id)))
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc
        if not record:
            raise JobNotFound(job_id)
        return job_from_record(job_id, record)

    async def recent(self, limit: int) -> list[TrainingJob]:
        try:
            ids = cast(list[str], await self.client.zrevrange(self.keys.index, 0, limit - 1))
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.record(job_id))
                records: list[dict[str, Any]] = await pipe.execute()
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc
        return [
            job_from_record(job_id, record)
            for job_id, record in zip(ids, records, strict=True)
            if record
        ]
