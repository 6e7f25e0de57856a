"""Retrain jobs: submit one to the trainer (by task name) and report on it; all need the token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query, Response

from iris_gateway.auth import TokenRequired, Unauthorized
from iris_gateway.jobs import JobNotFound, JobStoreUnavailable, TooManyPendingJobs
from iris_gateway.state import StateDep
from iris_shared.http import DocstringRoute, error_responses
from iris_shared.jobs import RetrainRequest, TrainingJob

# The token guards reading too: a job's parameters and errors are not for everyone.
router = APIRouter(tags=["jobs"], route_class=DocstringRoute, dependencies=[TokenRequired])

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Any string of the client's; the same key within 24 hours returns the "
        "job it first created instead of starting another.",
    ),
]
_LOCATION = {"Location": {"description": "/jobs/<job_id>", "schema": {"type": "string"}}}


@router.post(
    "/retrain",
    status_code=202,
    response_model=TrainingJob,
    responses={
        200: {
            "model": TrainingJob,
            "description": "This Idempotency-Key created a job already: that job.",
            "headers": _LOCATION,
        },
        202: {"description": "Accepted and queued.", "headers": _LOCATION},
        **error_responses(400, Unauthorized, 413, 415, JobStoreUnavailable, TooManyPendingJobs),
    },
)
async def retrain(
    response: Response,
    state: StateDep,
    idempotency_key: IdempotencyKey = None,
    body: Annotated[RetrainRequest | None, Body()] = None,
) -> TrainingJob:
    """Queue a retrain job and answer with its record (status `queued`) and its URL."""
    job, created = await state.jobs.submit(body or RetrainRequest(), idempotency_key)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return job


@router.get(
    "/jobs",
    response_model=list[TrainingJob],
    responses=error_responses(400, Unauthorized, JobStoreUnavailable),
)
async def list_jobs(
    state: StateDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[TrainingJob]:
    """List recent retrain jobs, newest first."""
    return await state.jobs.recent(limit)


@router.get(
    "/jobs/{job_id}",
    response_model=TrainingJob,
    responses=error_responses(400, Unauthorized, JobNotFound, JobStoreUnavailable),
)
async def get_job(job_id: JobId, state: StateDep) -> TrainingJob:
    """Report a retrain job's status, progress and result."""
    return await state.jobs.get(job_id)
