"""Answers kept for feedback: what the gateway's POST /feedback joins a label with.

`PredictionStore` keeps each answered request in Redis for the feedback window, as the shared
contract `iris_shared.feedback.StoredPrediction`, under the id the server made for the answer
(never a client's). Bounded three times: by time (the window), by count
(`max_stored_predictions`) and by bytes (`store_max_bytes`), the oldest going first; of a batch
only the first `store_max_rows` rows are kept. It runs on the recorder's thread, never on a
request's path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from iris_predictor.metrics import PredictorMetrics
from iris_shared.feedback import FeedbackKeys, StoredPrediction

logger = logging.getLogger(__name__)

# The kept answers' bookkeeping, shared by both scripts below. KEYS: the index (ids by answer
# time), the sizes (id -> bytes counted), the total of those bytes. An answer is forgotten
# whole: its key, its index entry and its bytes.
_STORE_PRELUDE = """
local index, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local prefix = ARGV[1]
local function forget(id)
  local size = tonumber(redis.call('HGET', sizes, id) or '0')
  redis.call('HDEL', sizes, id)
  redis.call('DECRBY', total, size)
  redis.call('DEL', prefix .. id)
end
local function drop_oldest(count)
  local dropped = 0
  while dropped < count do
    local oldest = redis.call('ZPOPMIN', index)
    if #oldest == 0 then break end
    forget(oldest[1])
    dropped = dropped + 1
  end
  return dropped
end
"""

# ARGV: the key prefix of an answer, seconds to keep answers, the byte budget, the overhead
# counted per answer, then per answer: its id, its time and its encoded StoredPrediction. Each
# answer is written once (SET NX): an id that exists already is a collision, reported, never
# an overwrite. Then the oldest answers go until the budget holds, so it is never exceeded by
# more than the answers of one call. Returns {collisions, answers dropped for the budget}.
_KEEP = (
    _STORE_PRELUDE
    + """
local window, budget, overhead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local collisions = 0
for i = 5, #ARGV, 3 do
  local id, document = ARGV[i], ARGV[i + 2]
  if redis.call('SET', prefix .. id, document, 'NX', 'EX', window) then
    local size = #document + #id + overhead
    redis.call('ZADD', index, ARGV[i + 1], id)
    redis.call('HSET', sizes, id, size)
    redis.call('INCRBY', total, size)
  else
    collisions = collisions + 1
  end
end
local over_budget = 0
while tonumber(redis.call('GET', total) or '0') > budget do
  if drop_oldest(1) == 0 then break end
  over_budget = over_budget + 1
end
return {collisions, over_budget}
"""
)

# ARGV: the key prefix of an answer, the oldest answer time to keep, the most answers to keep.
# Forgets the expired answers (their keys may be gone already: their bytes are not), then the
# oldest beyond the count. Returns {expired, over the count}.
_TRIM = (
    _STORE_PRELUDE
    + """
local expired = redis.call('ZRANGEBYSCORE', index, '-inf', ARGV[2])
for _, id in ipairs(expired) do
  forget(id)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', ARGV[2])
local excess = redis.call('ZCARD', index) - tonumber(ARGV[3])
local over_count = 0
if excess > 0 then
  over_count = drop_oldest(excess)
end
return {#expired, over_count}
"""
)

# What Redis spends on an answer beyond its stored bytes and id: the key with its prefix, its
# expiry, its index entry and its size entry (a little over 400 bytes together on Redis 7).
STORE_OVERHEAD_BYTES = 448


@dataclass(frozen=True)
class Answered:
    """One answered request, as the monitors see it."""

    time: float
    request_id: str
    model_version: str
    rows: np.ndarray
    predicted: list[int]  # class indices into `classes`, one per row
    classes: tuple[str, ...]


def stored_answer(item: Answered, max_rows: int) -> bytes:
    """The `StoredPrediction` of the first `max_rows` rows, its numbers copied as they are."""
    return StoredPrediction(
        model_version=item.model_version,
        time=item.time,
        classes=item.classes,
        rows=np.ascontiguousarray(item.rows[:max_rows], dtype="<f8").tobytes(),
        predicted=bytes(item.predicted[:max_rows]),
    ).encode()


class PredictionStore:
    """Answers kept in Redis for feedback, bounded by time, count and bytes.

    Answers are written in bulk: one round trip for many, and the GIL left to the requests; a
    label can be joined at most `FLUSH_INTERVAL_S` after its answer.
    """

    FLUSH_ANSWERS = 512
    # A call's arguments are held whole by Redis while its script runs.
    FLUSH_BYTES = 1024 * 1024
    FLUSH_INTERVAL_S = 0.2
    # Expired answers and the count bound are enforced about once a second (the count may be
    # exceeded by a second's worth); the byte budget on every write.
    TRIM_INTERVAL_S = 1.0

    def __init__(
        self,
        client: redis.Redis,
        keys: FeedbackKeys,
        metrics: PredictorMetrics,
        window_s: int,
        max_predictions: int,
        max_bytes: int,
        max_rows: int,
    ) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.window_s = window_s
        self.max_predictions = max_predictions
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._keep = client.register_script(_KEEP)
        self._trim = client.register_script(_TRIM)
        self._store_keys = [keys.predictions_index, keys.prediction_sizes, keys.prediction_bytes]
        self._failing = False
        self._pending: list[bytes | str | float] = []
        self._pending_bytes = 0
        self._flushed = self._trimmed = time.monotonic()

    def keep(self, answered: Sequence[Answered]) -> None:
        """Keep answers; they are written in bulk, every `FLUSH_ANSWERS` answers,
        `FLUSH_BYTES` bytes or `FLUSH_INTERVAL_S` seconds."""
        pending = self._pending
        for item in answered:
            document = stored_answer(item, self.max_rows)
            pending += (item.request_id, item.time, document)
            self._pending_bytes += len(document)
        now = time.monotonic()
        if (
            len(pending) >= 3 * self.FLUSH_ANSWERS
            or self._pending_bytes >= self.FLUSH_BYTES
            or now - self._flushed >= self.FLUSH_INTERVAL_S
        ):
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        self._flushed = time.monotonic()
        if not pending:
            return
        try:
            collisions, over_budget = self._keep(
                keys=self._store_keys,
                args=[
                    self.keys.prediction_prefix,
                    self.window_s,
                    self.max_bytes,
                    STORE_OVERHEAD_BYTES,
                    *pending,
                ],
            )
            self.metrics.prediction_store_dropped.labels("bytes").inc(over_budget)
            if collisions:
                # 128 random bits per id: a collision means a broken random source or a bug.
                self.metrics.prediction_store_collisions.inc(collisions)
                logger.error("Request id collision: answers not kept", extra={"count": collisions})
            if self._flushed - self._trimmed >= self.TRIM_INTERVAL_S:
                self._trimmed = self._flushed
                expired, over_count = self._trim(
                    keys=self._store_keys,
                    args=[
                        self.keys.prediction_prefix,
                        time.time() - self.window_s,
                        self.max_predictions,
                    ],
                )
                self.metrics.prediction_store_dropped.labels("expired").inc(expired)
                self.metrics.prediction_store_dropped.labels("count").inc(over_count)
        except redis.RedisError as exc:
            self.metrics.prediction_store_failures.inc(len(pending) // 3)
            if not self._failing:
                logger.warning(
                    "Unable to keep predictions for feedback", extra={"reason": str(exc)}
                )
            self._failing = True
            return
        if self._failing:
            logger.info("Keeping predictions for feedback again")
        self._failing = False

    def count_shadow(self, challenger_version: str, agree: int, disagree: int) -> None:
        try:
            with self.client.pipeline(transaction=False) as pipe:
                key = self.keys.shadow_counts(challenger_version)
                pipe.hincrby(key, "agree", agree)
                pipe.hincrby(key, "disagree", disagree)
                pipe.expire(key, self.window_s)
                pipe.execute()
        except redis.RedisError:
            # The Prometheus counters have it; the CLI's summary misses this batch.
            logger.debug("Unable to count shadow agreement in Redis", exc_info=True)
