"""What the worker writes about the job it runs: its record, its heartbeat, its end.

The record (`iris_shared.jobs`) is the one account of a job: the gateway reads it, the worker
writes it. A running job beats every `heartbeat_interval_s`: the record's `heartbeat_at`, and
the score of its message in kombu's index of unacknowledged messages, so Redis' visibility
timeout can be short (a dead worker's job comes back within a minute) without ever handing a
healthy long job to a second worker.

A job whose record says it was running when it is delivered again lost its worker on the way
(killed, out of memory). After `MAX_DELIVERIES` such losses it is not run again: it ends
failed as a poison job rather than taking every worker down in turn. A worker that stops on
SIGTERM hands its job back first (`handed_back`), so a deployment's restarts never make a
healthy job poison.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum

import redis

from iris_shared.jobs import (
    MAX_DELIVERIES,
    JobKeys,
    JobProgress,
    JobStatus,
    RecordField,
    TrainingResult,
    record_fields,
)

logger = logging.getLogger(__name__)

# Atomically: decide whether this delivery runs, and count it. Returns {verdict, deliveries}.
_START = """
local record, pending = KEYS[1], KEYS[2]
local now, max_lost, job_id, poison = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local status = redis.call('HGET', record, 'status')
if status == 'succeeded' or status == 'failed' then
  return {'finished', 0}
end
local lost = tonumber(redis.call('HGET', record, 'lost') or '0')
if status == 'running' then
  lost = lost + 1
  redis.call('HSET', record, 'lost', lost)
end
local deliveries = redis.call('HINCRBY', record, 'deliveries', 1)
if lost >= max_lost then
  redis.call('HSET', record, 'status', 'failed', 'error', poison, 'finished_at', now)
  redis.call('ZREM', pending, job_id)
  return {'poison', deliveries}
end
redis.call('HSET', record, 'status', 'running', 'heartbeat_at', now)
redis.call('HSETNX', record, 'started_at', now)
return {'run', deliveries}
"""


# Back to queued, unless the job ended in the meantime.
_HAND_BACK = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'error', ARGV[1])
  redis.call('HDEL', KEYS[1], 'progress')
end
"""


class Verdict(StrEnum):
    run = "run"
    # Already succeeded or failed (a duplicate, or a job the gateway could not queue).
    finished = "finished"
    poison = "poison"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class JobRecorder:
    def __init__(self, client: redis.Redis, keys: JobKeys, heartbeat_interval_s: float) -> None:
        self.client = client
        self.keys = keys
        self.heartbeat_interval_s = heartbeat_interval_s
        self._start = client.register_script(_START)
        self._hand_back = client.register_script(_HAND_BACK)

    def start(self, job_id: str) -> tuple[Verdict, int]:
        """Count this delivery and say whether to run it; marks the job running if so."""
        poison = (
            f"Poison job: its worker died during each of {MAX_DELIVERIES} deliveries (out of "
            "memory, or killed); it is not delivered again."
        )
        verdict, deliveries = self._start(
            keys=[self.keys.record(job_id), self.keys.pending],
            args=[_now(), MAX_DELIVERIES, job_id, poison],
        )
        return Verdict(verdict.decode() if isinstance(verdict, bytes) else verdict), deliveries

    def progress(self, job_id: str, progress: JobProgress) -> None:
        """Record how far the job got; a Redis that cannot take it never fails the job (the
        next stage, or the end, is written all the same)."""
        try:
            self.client.hset(
                self.keys.record(job_id),
                mapping=record_fields(progress=progress, heartbeat_at=_now()),
            )
        except redis.RedisError:
            logger.warning("Unable to record the job's progress", exc_info=True)

    def succeeded(self, job_id: str, result: TrainingResult) -> None:
        self._end(job_id, JobStatus.succeeded, result=result)

    def failed(self, job_id: str, error: str) -> None:
        self._end(job_id, JobStatus.failed, error=error)

    def waiting_for_retry(self, job_id: str, reason: str) -> None:
        """Back to queued: the task was scheduled again (a transient MLflow failure)."""
        self.client.hset(
            self.keys.record(job_id),
            mapping=record_fields(status=JobStatus.queued, error=reason),
        )

    def handed_back(self, job_id: str) -> None:
        """Back to queued: this worker is stopping and its job goes back to the queue."""
        self._hand_back(
            keys=[self.keys.record(job_id)],
            args=["Handed back by a worker that was stopping; it runs again."],
        )

    def _end(self, job_id: str, status: JobStatus, **outcome: object) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.record(job_id),
                mapping=record_fields(status=status, finished_at=_now(), **outcome),
            )
            pipe.hdel(self.keys.record(job_id), RecordField.progress.value)
            pipe.zrem(self.keys.pending, job_id)
            pipe.execute()

    @contextmanager
    def heartbeat(self, job_id: str, delivery_tag: str | None) -> Iterator[None]:
        """Beat while the block runs: record `heartbeat_at`, keep the message's delivery fresh."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval_s):
                try:
                    with self.client.pipeline(transaction=False) as pipe:
                        pipe.hset(self.keys.record(job_id), RecordField.heartbeat_at.value, _now())
                        if delivery_tag is not None:
                            # XX: only while the message is still unacknowledged.
                            pipe.zadd(
                                self.keys.unacked_index,
                                {delivery_tag: datetime.now(UTC).timestamp()},
                                xx=True,
                            )
                        pipe.execute()
                except redis.RedisError:
                    logger.warning("Unable to beat the job's heartbeat", exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
