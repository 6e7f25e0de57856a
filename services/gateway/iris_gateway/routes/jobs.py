"""Retrain jobs: submit one to the trainer (by task name) and report on it."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response
from kombu.exceptions import KombuError
from starlette.concurrency import run_in_threadpool

from iris_gateway.auth import TokenRequired
from iris_gateway.dependencies import CeleryDep, JobStoreDep, MetricsDep
from iris_gateway.jobs import JobStoreUnavailable
from iris_shared.http import error_responses
from iris_shared.jobs import (
    RETRAIN_TASK,
    TRAINING_QUEUE,
    JobAccepted,
    JobStatus,
    RetrainRequest,
    TrainingJob,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


@router.post(
    "/retrain",
    status_code=202,
    response_model=JobAccepted,
    responses={
        202: {
            "headers": {"Location": {"description": "/jobs/<job_id>", "schema": {"type": "string"}}}
        },
        **error_responses(400, 401, 413, 415, 503),
    },
    dependencies=[TokenRequired],
)
async def retrain(
    response: Response,
    jobs: JobStoreDep,
    celery: CeleryDep,
    metrics: MetricsDep,
    body: Annotated[RetrainRequest | None, Body()] = None,
) -> JobAccepted:
    """Queue a retrain job and answer with its id."""
    parameters = body or RetrainRequest()
    job_id = str(uuid.uuid4())
    # The record comes first: a job the worker picks up at once must already be known here.
    await jobs.create(job_id, parameters)
    try:
        await run_in_threadpool(
            celery.send_task,
            RETRAIN_TASK,
            kwargs=parameters.model_dump(),
            task_id=job_id,
            queue=TRAINING_QUEUE,
        )
    except (KombuError, OSError) as exc:
        await jobs.discard(job_id)
        # The broker is the same Redis: answered (and counted) like any job-store outage.
        raise JobStoreUnavailable(f"Unable to queue the job: {exc}") from exc
    metrics.jobs_submitted.inc()
    logger.info("Retrain job queued", extra={"job_id": job_id})
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobAccepted(job_id=job_id, status=JobStatus.queued)


@router.get("/jobs", response_model=list[TrainingJob], responses=error_responses(400, 503))
async def list_jobs(
    jobs: JobStoreDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[TrainingJob]:
    """List recent retrain jobs, newest first."""
    return await jobs.recent(limit)


@router.get("/jobs/{job_id}", response_model=TrainingJob, responses=error_responses(400, 404, 503))
async def get_job(job_id: JobId, jobs: JobStoreDep) -> TrainingJob:
    """Report a retrain job's status, progress and result."""
    return await jobs.get(job_id)
