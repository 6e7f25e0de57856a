"""The retrain job contract between the gateway (which submits) and the trainer (which runs).

The gateway sends the task by name and never imports trainer code, so the task name, the
queue, the payload, the job record both sides read and write, and the progress and result
shapes are agreed here.

A job's record (a Redis hash, `JobKeys.record`) is the one account of it. The gateway writes it
when it accepts the job; from then on only the worker writes it: started, progress, heartbeat,
succeeded or failed. `GET /jobs/{id}` only reads it. Every key of a deployment starts with its
namespace (`JOBS_NAMESPACE`), so deployments that share a Redis never see each other's jobs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

RETRAIN_TASK: Final = "trainer.retrain"
DEFAULT_JOBS_NAMESPACE: Final = "iris"
JOBS_NAMESPACE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A job whose worker died this many times is not delivered again: it ends failed as poison.
MAX_DELIVERIES: Final = 3


def _whole_number(value: object) -> object:
    # JSON Schema counts 2.0 as an integer; strict mode alone would refuse it.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The bounds of every parameter a job may set; the trainer's params.yaml model uses the same.
TestSize = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]
Seed = Annotated[
    int,
    BeforeValidator(_whole_number),
    Field(ge=0, le=2**32 - 1, description="numpy accepts 0 to 2**32 - 1."),
]
# Upper bounds keep one job's cost within what a worker can spend on a data set this size:
# past them, a job only burns the worker's time (or its memory) for the same model.
InverseRegularisation = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Iterations = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=10_000)]
TreeCount = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=5000)]
TreeDepth = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=64)]

# A branch, tag, commit or relative revision such as HEAD~1 or main^2; nothing git could read
# as an option (leading '-'), a range ('..'), a path (':') or a reflog entry ('@{').
GIT_REVISION_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._/~^-]{0,199}$"


def _is_none(value: object) -> bool:
    return value is None


def _override(**constraints: Any) -> Any:
    # None means "keep params.yaml's value", so it is left out of what is sent and stored.
    return Field(default=None, exclude_if=_is_none, **constraints)


class _Overrides(BaseModel):
    # strict: "0.5" or true are refused rather than coerced; forbid: only the listed knobs.
    model_config = ConfigDict(extra="forbid", strict=True)


class SplitOverrides(_Overrides):
    test_size: TestSize | None = _override(description="Share of rows held out for evaluation.")
    random_state: Seed | None = _override(description="Seed of the train/test split.")


class LogisticRegressionOverrides(_Overrides):
    C: InverseRegularisation | None = _override(description="Inverse regularisation strength.")
    max_iter: Iterations | None = _override(description="Solver iterations at most.")


class RandomForestOverrides(_Overrides):
    n_estimators: TreeCount | None = _override(description="Number of trees.")
    max_depth: TreeDepth | None = _override(description="Depth of each tree at most.")
    random_state: Seed | None = _override(description="Seed of the forest.")


class ModelOverrides(_Overrides):
    logistic_regression: LogisticRegressionOverrides | None = _override()
    random_forest: RandomForestOverrides | None = _override()


class ParamOverrides(_Overrides):
    """The parameters a retrain job may change; everything else comes from params.yaml.

    The data file, the registered model names, the gate and the experiment are not among
    them: a job trains the DVC-tracked data/iris.csv under the checkout's own policy.
    """

    split: SplitOverrides | None = _override()
    models: ModelOverrides | None = _override()


class RetrainRequest(BaseModel):
    """Optional parameters of a retrain job; an empty body retrains on the checked-out data."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {},
                {"data_rev": "HEAD~1"},
                {"params": {"models": {"logistic_regression": {"C": 0.5}}}},
            ]
        },
    )

    data_rev: str | None = Field(
        default=None,
        pattern=GIT_REVISION_PATTERN,
        description="Git revision (branch, tag, commit, HEAD~1) of the DVC-tracked "
        "data/iris.csv; the working copy when omitted.",
    )
    params: ParamOverrides | None = Field(
        default=None,
        description="Overrides of params.yaml (same nesting); only split.test_size, "
        "split.random_state, models.logistic_regression.{C, max_iter} and "
        "models.random_forest.{n_estimators, max_depth, random_state}.",
    )

    @field_validator("data_rev")
    @classmethod
    def _not_a_range(cls, value: str | None) -> str | None:
        if value is not None and ".." in value:
            raise ValueError("must be a single revision, not a range ('..')")
        return value


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


TERMINAL_STATUSES: Final = frozenset({JobStatus.succeeded, JobStatus.failed})


class TrainingStage(StrEnum):
    loading_data = "loading_data"
    validating = "validating"
    training = "training"
    evaluating = "evaluating"
    registering = "registering"


class JobProgress(BaseModel):
    stage: TrainingStage
    model_name: str | None = None
    step: int
    total_steps: int
    started_at: datetime | None = None


class CandidateOutcome(BaseModel):
    """What happened to one registered model during a training run."""

    model_name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    gate: str = Field(description="'first_version', 'passed' or 'failed'.")
    gate_reason: str
    aliases_set: list[str]


class TrainingResult(BaseModel):
    data_md5: str
    rows: int
    models: dict[str, CandidateOutcome]
    stage_seconds: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds spent in each TrainingStage, summed over the candidate models.",
    )


class TrainingJob(BaseModel):
    """A retrain job as GET /jobs/{id} reports it."""

    job_id: str
    status: JobStatus
    progress: JobProgress | None = None
    result: TrainingResult | None = None
    error: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = Field(
        default=None, description="Last sign of life of the worker running it."
    )
    deliveries: int = Field(
        default=0,
        description=f"Times a worker started it; a worker that dies hands it to another, "
        f"at most {MAX_DELIVERIES} times.",
    )
    parameters: RetrainRequest | None = None


class JobKeys:
    """Where one deployment's jobs live in Redis, every name under its namespace."""

    def __init__(self, namespace: str = DEFAULT_JOBS_NAMESPACE) -> None:
        self.namespace = namespace
        # The Celery queue, and the prefix of every key Celery's Redis transport writes.
        self.queue = f"{namespace}.training"
        self.broker_prefix = f"{namespace}:celery:"
        # kombu's index of delivered, unacknowledged messages (score: delivery time).
        self.unacked_index = f"{self.broker_prefix}unacked_index"
        # Every job by submission time; the jobs not finished yet (the cap counts these).
        self.index = f"{namespace}:jobs"
        self.pending = f"{namespace}:jobs:pending"

    def record(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def idempotency(self, key: str) -> str:
        # Hashed: the client's key may be long or hold any character.
        return f"{self.namespace}:idempotency:{hashlib.sha256(key.encode()).hexdigest()}"


class RecordField(StrEnum):
    """The fields of a job record (all strings; JSON for the structured ones)."""

    submitted_at = "submitted_at"
    parameters = "parameters"
    status = "status"
    started_at = "started_at"
    finished_at = "finished_at"
    heartbeat_at = "heartbeat_at"
    deliveries = "deliveries"
    progress = "progress"
    result = "result"
    error = "error"


_JSON_FIELDS: Final = {RecordField.parameters, RecordField.progress, RecordField.result}


def record_fields(**values: Any) -> dict[Any, str]:
    """Values of `RecordField`s as the strings a Redis hash stores.

    The keys are field names (str), typed Any: redis-py's `hset(mapping=...)` takes a mapping
    keyed by a union of types, and a dict's key type must match it exactly."""
    fields = {}
    for name, value in values.items():
        field = RecordField(name)
        if isinstance(value, datetime):
            fields[field.value] = value.isoformat()
        elif isinstance(value, BaseModel):
            fields[field.value] = value.model_dump_json(exclude_none=True)
        elif field in _JSON_FIELDS:
            fields[field.value] = json.dumps(value)
        else:
            fields[field.value] = str(value)
    return fields


def job_from_record(job_id: str, record: Mapping[str, str]) -> TrainingJob:
    """The job a record describes; a field that does not parse is left out, not fatal."""
    values: dict[str, Any] = {"job_id": job_id, "status": JobStatus.queued}
    for field in RecordField:
        raw = record.get(field.value)
        if raw is None or raw == "":
            continue
        try:
            values[field.value] = json.loads(raw) if field in _JSON_FIELDS else raw
        except ValueError:
            continue
    try:
        return TrainingJob.model_validate(values)
    except ValidationError:
        # A record written by another version of the worker: report what is certain.
        return TrainingJob.model_validate(
            {k: v for k, v in values.items() if k in ("job_id", "status", "submitted_at")}
        )
