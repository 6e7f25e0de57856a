"""What the gateway collected about answered predictions, read back on the trainer's side.

- `add_feedback`: the labelled rows waiting in Redis (`FeedbackKeys.labelled`, written by the
  gateway's POST /feedback) become rows of data/iris.csv and a new DVC version. The rows are
  validated with the rest of the file, exactly as training validates it, and only after
  `dvc add` and `dvc push` succeeded are they removed from Redis: by the count taken, so rows
  labelled in the meantime stay for the next run. A run that fails before that puts the file
  and its pointer back as they were, so running it again adds each row once.
- `live_figures`: per model version, how often the challenger agreed with production in
  shadow scoring, and the accuracy of its last labelled answers.

The keys are `iris_shared.feedback.FeedbackKeys` of the deployment's JOBS_NAMESPACE.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis
from pydantic import ValidationError

from iris_shared.feedback import FeedbackKeys, LabelledRow
from iris_shared.schemas import FEATURE_NAMES
from iris_trainer.pipeline.data import (
    DATA_RELATIVE_PATH,
    Dataset,
    DataUnavailableError,
    load_dataset,
    md5_of,
)
from iris_trainer.pipeline.validation import ValidationReport, validate

logger = logging.getLogger(__name__)

# Longer than any `dvc add` + `dvc push` of this data set; a crashed run frees it by then.
ADD_LOCK_TIMEOUT_S: Final = 600
REDIS_TIMEOUT_S: Final = 2.0


class FeedbackDataError(Exception):
    """The labelled rows cannot be added; nothing was changed."""


def redis_client(url: str) -> redis.Redis:
    # No retries: a command-line tool should say at once that Redis is down.
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )


@dataclass(frozen=True)
class FeedbackAddition:
    """What `add_feedback` added (or, in a dry run, would add)."""

    rows: list[LabelledRow]
    lines: list[str]
    total_rows: int
    md5: str | None
    report: ValidationReport


def csv_line(row: LabelledRow) -> str:
    """The row as data/iris.csv spells one: four measurements, then the species."""
    return ",".join([*(repr(float(value)) for value in row.features), row.actual_species])


def _parse(raw: Iterable[str | bytes]) -> list[LabelledRow]:
    rows = []
    for position, text in enumerate(raw):
        try:
            row = LabelledRow.model_validate_json(text)
        except ValidationError as exc:
            raise FeedbackDataError(
                f"labelled row {position + 1} in Redis is not a LabelledRow: {exc.errors()[0]}"
            ) from None
        if len(row.features) != len(FEATURE_NAMES):
            raise FeedbackDataError(
                f"labelled row {position + 1} (request {row.request_id} row {row.row}) has "
                f"{len(row.features)} measurements, not {len(FEATURE_NAMES)}"
            )
        rows.append(row)
    return rows


def _combined(existing: Dataset, lines: list[str]) -> Dataset:
    text = existing.frame_text
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(f"{line}\n" for line in lines)
    return Dataset(text, md5_of(text.encode()), existing.source, None)


def _problems(report: ValidationReport, existing_rows: int, rows: list[LabelledRow]) -> str:
    """The report, naming the labelled rows by request id where a problem is in one of them."""
    described = []
    for problem in report.problems[:20]:
        text = str(problem)
        # Line 1 is the header; the labelled rows follow the file's own rows.
        index = (problem.line or 0) - 2 - existing_rows
        if 0 <= index < len(rows):
            row = rows[index]
            text += f" [labelled row {index + 1}: request {row.request_id} row {row.row}]"
        described.append(f"  - {text}")
    if len(report.problems) > 20:
        described.append(f"  ... and {len(report.problems) - 20} more")
    return "\n".join([f"{len(report.problems)} problem(s) in {report.rows} rows:", *described])


def add_feedback(
    repo_root: Path, client: redis.Redis, keys: FeedbackKeys, *, dry_run: bool = False
) -> FeedbackAddition:
    """Append the waiting labelled rows to data/iris.csv, `dvc add` and `dvc push` it, then
    remove them from Redis. Raises FeedbackDataError (nothing changed) when it cannot."""
    # Two runs at once would both take the same rows.
    lock = client.lock(f"{keys.namespace}:feedback:add-lock", timeout=ADD_LOCK_TIMEOUT_S)
    try:
        if not lock.acquire(blocking=False):
            raise FeedbackDataError("another `iris-mlops data add-feedback` is running")
    except redis.RedisError as exc:
        raise FeedbackDataError(f"cannot reach Redis (REDIS_URL): {exc}") from exc
    try:
        return _add(repo_root, client, keys, dry_run=dry_run)
    except redis.RedisError as exc:
        raise FeedbackDataError(f"cannot reach Redis (REDIS_URL): {exc}") from exc
    finally:
        try:
            lock.release()
        except redis.RedisError:
            # Expired or unreachable: it frees itself after ADD_LOCK_TIMEOUT_S.
            logger.warning("Unable to release the add-feedback lock", exc_info=True)


def _add(
    repo_root: Path, client: redis.Redis, keys: FeedbackKeys, *, dry_run: bool
) -> FeedbackAddition:
    rows = _parse(client.lrange(keys.labelled, 0, -1))
    if not rows:
        return FeedbackAddition([], [], 0, None, ValidationReport())
    try:
        existing = load_dataset(repo_root)
    except DataUnavailableError as exc:
        raise FeedbackDataError(str(exc)) from exc
    lines = [csv_line(row) for row in rows]
    combined = _combined(existing, lines)
    report = validate(combined.raw_frame())
    if not report.ok:
        raise FeedbackDataError(
            f"{DATA_RELATIVE_PATH} with the labelled rows fails validation; nothing was "
            f"added\n{_problems(report, existing.rows, rows)}"
        )
    if dry_run:
        return FeedbackAddition(rows, lines, combined.rows, None, report)
    md5 = _record_version(repo_root, combined.frame_text.encode())
    # Only now: if anything above failed, the rows stay in Redis for the next run.
    try:
        client.ltrim(keys.labelled, len(rows), -1)
    except redis.RedisError as exc:
        raise FeedbackDataError(
            f"the {len(rows)} rows were added ({DATA_RELATIVE_PATH} md5 {md5}, pushed), but "
            f"could not be removed from Redis ({exc}); remove them before the next run, or "
            f"they are added twice: redis-cli LTRIM {keys.labelled} {len(rows)} -1"
        ) from exc
    return FeedbackAddition(rows, lines, combined.rows, md5, report)


def _record_version(repo_root: Path, content: bytes) -> str:
    """Write the data, `dvc add` and `dvc push` it; on failure put file and pointer back."""
    from dvc.repo import Repo  # imported here: DVC is slow to import

    data = repo_root / DATA_RELATIVE_PATH
    pointer = data.with_name(data.name + ".dvc")
    before = data.read_bytes()
    pointer_before = pointer.read_bytes() if pointer.exists() else None
    try:
        data.write_bytes(content)
        with Repo(str(repo_root)) as repo:
            repo.add(str(data))
            repo.push(targets=[str(data)])
    except Exception as exc:  # DVC raises a family of errors (no remote, cache, lock, ...)
        data.write_bytes(before)
        if pointer_before is None:
            pointer.unlink(missing_ok=True)
        else:
            pointer.write_bytes(pointer_before)
        raise FeedbackDataError(
            f"dvc add / dvc push failed, so {DATA_RELATIVE_PATH} was put back as it was and "
            f"the labelled rows stay in Redis: {exc}"
        ) from exc
    return md5_of(content)


@dataclass(frozen=True)
class Rate:
    """A share and how many observations it is of."""

    value: float
    count: int

    def __str__(self) -> str:
        return f"{self.value:.0%} ({self.count})"


@dataclass(frozen=True)
class LiveFigures:
    shadow_agreement: Rate | None
    live_accuracy: Rate | None


def live_figures(
    client: redis.Redis, keys: FeedbackKeys, versions: list[str]
) -> dict[str, LiveFigures]:
    """Shadow agreement and live accuracy of each version, None where there is none yet.

    Raises redis.RedisError when Redis cannot be reached.
    """
    with client.pipeline(transaction=False) as pipe:
        for version in versions:
            pipe.hmget(keys.shadow_counts(version), "agree", "disagree")
            pipe.lrange(keys.outcomes(version), 0, -1)
        replies = pipe.execute()
    figures = {}
    for index, version in enumerate(versions):
        agree, disagree = (int(value or 0) for value in replies[2 * index])
        outcomes = [int(value) for value in replies[2 * index + 1]]
        figures[version] = LiveFigures(
            shadow_agreement=Rate(agree / (agree + disagree), agree + disagree)
            if agree + disagree
            else None,
            live_accuracy=Rate(sum(outcomes) / len(outcomes), len(outcomes)) if outcomes else None,
        )
    return figures
