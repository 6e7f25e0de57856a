"""Feedback: the true species of flowers the service predicted, joined with what it answered.

The contract (keys, `Feedback`, `StoredPrediction`, `LabelledRow`) is `iris_shared.feedback`.
The predictor keeps each answered request as a `StoredPrediction` for the feedback window; a
label is accepted once per (request id, row), in one Lua script per request so that the check
and the writes cannot interleave with another label of the same row:

    <ns>:prediction:<request id>                 the predictor's answer (read only, here)
    <ns>:feedback:answered:<request id>:<row>    set once labelled (expires with the window)
    <ns>:feedback:outcomes:<version>             '1' right / '0' wrong, newest first, the last
                                                 GATEWAY_LIVE_ACCURACY_WINDOW kept
    <ns>:feedback:labelled                       LabelledRow JSON, oldest first, for
                                                 `iris-mlops data add-feedback` (at most
                                                 GATEWAY_MAX_LABELLED_ROWS)

Nothing here grows without bound: answered marks expire with the window, each version's
outcomes are trimmed to the accuracy window, and the labelled list stops taking rows when full.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Final

import redis.asyncio as redis
from pydantic import BaseModel, Field

from iris_gateway.metrics import GatewayMetrics
from iris_shared.feedback import (
    STORED_ROW_BYTES,
    STORED_ROW_FORMAT,
    Feedback,
    FeedbackKeys,
)
from iris_shared.http import ServiceError

logger = logging.getLogger(__name__)

MAX_FEEDBACK_ITEMS: Final = 1000

# KEYS: labelled, then per item its answered key.
# ARGV: outcomes key prefix, window (s), accuracy window, labelled cap, now (epoch s), the key
# prefix of a kept answer, then per item its request id, row (0-based) and actual species.
# Returns {per item {outcome, model version, correct}, per version touched {version, right,
# labels counted}, rows not kept because the labelled list was full}.
#
# Two kinds of keys are built here from their prefix rather than declared: the outcomes key
# depends on the version stored with the prediction, which only the script reads, and the kept
# answer is only read, which the gateway's Redis user may do (iris_shared.redis_acl) while a
# declared key would need write access too. Fine on the single Redis a deployment uses (not on
# Redis Cluster, where every key must be declared).
# cjson writes numbers with 14 significant digits: far finer than a measurement in cm.
# `$ROW_FORMAT` and `$ROW_BYTES` come from the stored answer's contract (StoredPrediction).
_RECORD_TEMPLATE = """
local labelled = KEYS[1]
local outcomes_prefix, window, keep, cap, now, answer_prefix =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local results, touched, versions, not_kept = {}, {}, {}, 0

-- A kept answer: its JSON head, a newline, the rows packed, one byte per row for the class.
-- Returns the head with where the rows and the classes start, or false.
local function decode(raw)
  local newline = string.find(raw, '\\n', 1, true)
  if not newline then
    -- Kept by a predictor of before the packed format: the whole answer as JSON.
    local ok, old = pcall(cjson.decode, raw)
    if ok and type(old) == 'table' and type(old.rows) == 'table' then return old end
    return false
  end
  local ok, head = pcall(cjson.decode, string.sub(raw, 1, newline - 1))
  if not ok or type(head) ~= 'table' or type(head.row_count) ~= 'number'
      or type(head.classes) ~= 'table' then
    return false
  end
  head.rows_at = newline + 1
  head.predicted_at = head.rows_at + head.row_count * $ROW_BYTES
  if #raw ~= head.predicted_at + head.row_count - 1 then return false end
  head.raw = raw
  return head
end

-- The features and predicted species of a row of a kept answer, or nil.
local function answered_row(stored, row)
  if stored.raw == nil then
    local species = stored.predicted_species
    return stored.rows[row + 1], type(species) == 'table' and species[row + 1] or nil
  end
  if row >= stored.row_count then return nil, nil end
  local features = {struct.unpack('$ROW_FORMAT', stored.raw, stored.rows_at + row * $ROW_BYTES)}
  features[#features] = nil  -- struct.unpack ends with the position after what it read
  local class = string.byte(stored.raw, stored.predicted_at + row)
  return features, stored.classes[class + 1]
end

-- Each kept answer is decoded once per call, however many of its rows the list labels.
local decoded = {}
local items = (#ARGV - 6) / 3
for i = 1, items do
  local request_id = ARGV[6 + 3 * i - 2]
  local row = tonumber(ARGV[6 + 3 * i - 1])
  local actual = ARGV[6 + 3 * i]
  local stored = decoded[request_id]
  if stored == nil then
    local raw = redis.call('GET', answer_prefix .. request_id)
    stored = raw and decode(raw) or false
    decoded[request_id] = stored
  end
  local features, predicted, version = nil, nil, nil
  if stored then
    features, predicted = answered_row(stored, row)
    version = stored.model_version
  end
  local named = type(version) == 'string' or type(version) == 'number'
  if type(features) ~= 'table' or type(predicted) ~= 'string' or not named then
    results[i] = {'not_found', '', 0}
  elseif not redis.call('SET', KEYS[i + 1], '1', 'NX', 'EX', window) then
    results[i] = {'duplicate', '', 0}
  else
    version = tostring(version)
    local correct = 0
    if predicted == actual then correct = 1 end
    local outcomes = outcomes_prefix .. version
    redis.call('LPUSH', outcomes, correct)
    redis.call('LTRIM', outcomes, 0, keep - 1)
    if redis.call('LLEN', labelled) < cap then
      redis.call('RPUSH', labelled, cjson.encode({
        request_id = request_id, row = row, model_version = version, features = features,
        predicted_species = predicted, actual_species = actual, labelled_at = now}))
    else
      not_kept = not_kept + 1
    end
    results[i] = {'accepted', version, correct}
    if not touched[version] then
      touched[version] = true
      versions[#versions + 1] = version
    end
  end
end
local accuracy = {}
for _, version in ipairs(versions) do
  local recent = redis.call('LRANGE', outcomes_prefix .. version, 0, keep - 1)
  local right = 0
  for _, outcome in ipairs(recent) do
    if outcome == '1' then right = right + 1 end
  end
  accuracy[#accuracy + 1] = {version, right, #recent}
end
return {results, accuracy, not_kept}
"""
RECORD_SCRIPT = _RECORD_TEMPLATE.replace("$ROW_FORMAT", STORED_ROW_FORMAT).replace(
    "$ROW_BYTES", str(STORED_ROW_BYTES)
)


class FeedbackOutcome(StrEnum):
    accepted = "accepted"
    not_found = "not_found"
    duplicate = "duplicate"


class FeedbackResult(BaseModel):
    """What became of one label."""

    request_id: str
    row: int
    outcome: FeedbackOutcome = Field(
        description="`accepted`; `not_found`: no prediction with this request id within the "
        "feedback window, or no such row in it; `duplicate`: this row was labelled already."
    )


class BulkFeedbackResult(BaseModel):
    """What became of each label of a list, in the order sent, and the counts."""

    results: list[FeedbackResult]
    accepted: int
    not_found: int
    duplicate: int


class FeedbackUnavailable(ServiceError):
    """Redis, which holds the predictions and their labels, cannot be reached."""

    status_code = 503
    error = "feedback_unavailable"
    retry_after_s = 5

    def __init__(self) -> None:
        super().__init__(
            "Feedback is unavailable right now (Redis cannot be reached); retry later."
        )


class PredictionNotFound(ServiceError):
    """No stored prediction has this request id (never answered, or older than the window),
    or the prediction has no such row (of a batch only the first `feedback_rows` are kept)."""

    status_code = 404
    error = "prediction_not_found"

    def __init__(self, feedback: Feedback) -> None:
        where = f" row {feedback.row}" if feedback.row else ""
        super().__init__(
            f"No prediction{where} with request id '{feedback.request_id}' within the feedback "
            "window (it was never answered, it expired, or it has fewer rows: of a batch, only "
            "the first `feedback_rows` rows of the answer take feedback)."
        )


class FeedbackAlreadyGiven(ServiceError):
    """This row of this prediction was labelled already; a label is taken once."""

    status_code = 409
    error = "feedback_already_given"

    def __init__(self, feedback: Feedback) -> None:
        super().__init__(
            f"Row {feedback.row} of request '{feedback.request_id}' was labelled already."
        )


class FeedbackStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: FeedbackKeys,
        *,
        window_s: int,
        accuracy_window: int,
        max_labelled_rows: int,
        metrics: GatewayMetrics,
    ) -> None:
        self.client = client
        self.keys = keys
        self.window_s = window_s
        self.accuracy_window = accuracy_window
        self.max_labelled_rows = max_labelled_rows
        self.metrics = metrics
        self._record_script = client.register_script(RECORD_SCRIPT)

    async def give(self, feedback: Feedback) -> FeedbackResult:
        """Record one label; raises when it is not accepted."""
        [result] = await self.record([feedback])
        if result.outcome is FeedbackOutcome.not_found:
            raise PredictionNotFound(feedback)
        if result.outcome is FeedbackOutcome.duplicate:
            raise FeedbackAlreadyGiven(feedback)
        return result

    async def give_many(self, items: list[Feedback]) -> BulkFeedbackResult:
        """Record each label that can be; the others are reported, not raised."""
        results = await self.record(items)
        counts = {outcome: 0 for outcome in FeedbackOutcome}
        for result in results:
            counts[result.outcome] += 1
        return BulkFeedbackResult(
            results=results,
            accepted=counts[FeedbackOutcome.accepted],
            not_found=counts[FeedbackOutcome.not_found],
            duplicate=counts[FeedbackOutcome.duplicate],
        )

    async def record(self, items: list[Feedback]) -> list[FeedbackResult]:
        keys = [self.keys.labelled]
        args: list[str | int | float] = [
            self.keys.outcomes(""),
            self.window_s,
            self.accuracy_window,
            self.max_labelled_rows,
            time.time(),
            self.keys.prediction_prefix,
        ]
        for item in items:
            keys.append(self.keys.answered(item.request_id, item.row))
            args += [item.request_id, item.row, item.actual_species]
        try:
            outcomes, accuracy, not_kept = await self._record_script(keys=keys, args=args)
        except redis.RedisError as exc:
            self.metrics.upstream_error("redis", "unavailable")
            logger.warning("Redis unavailable", extra={"reason": str(exc)})
            raise FeedbackUnavailable() from exc
        results = []
        for item, (outcome, version, correct) in zip(items, outcomes, strict=True):
            if outcome == FeedbackOutcome.accepted:
                self.metrics.feedback_given(version, correct=bool(correct))
            results.append(
                FeedbackResult(
                    request_id=item.request_id, row=item.row, outcome=FeedbackOutcome(outcome)
                )
            )
        for version, right, counted in accuracy:
            self.metrics.live_accuracy.labels(model_version=version).set(right / counted)
        if not_kept:
            logger.warning(
                "Labelled rows not kept for training: the list is full; run "
                "`iris-mlops data add-feedback`",
                extra={"rows": not_kept, "max_labelled_rows": self.max_labelled_rows},
            )
        return results
