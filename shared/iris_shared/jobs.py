"""The retrain job contract between the gateway (which submits) and the trainer (which runs).

The gateway sends the task by name and never imports trainer code, so the task name,
the queue, the payload and the progress/result shapes are agreed here.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

RETRAIN_TASK = "trainer.retrain"
TRAINING_QUEUE = "training"


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
        max_length=200,
        description="Git revision of the DVC-tracked data/iris.csv; the working copy when omitted.",
    )
    params: dict[str, Any] | None = Field(
        default=None,
        description="Overrides merged into params.yaml (same nesting), e.g. models.random_forest.",
    )


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


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
    parameters: RetrainRequest | None = None


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus = JobStatus.queued
