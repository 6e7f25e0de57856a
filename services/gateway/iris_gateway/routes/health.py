"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from iris_gateway.dependencies import JobStoreDep, PredictorDep
from iris_gateway.jobs import JobStoreUnavailable
from iris_gateway.upstream import UpstreamError
from iris_shared.http import error_response, error_responses

router = APIRouter(tags=["health"])

# Readiness probes run often; a slow upstream counts as not ready.
READY_TIMEOUT = httpx.Timeout(2.0, connect=1.0)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Report that the process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(predictor: PredictorDep, jobs: JobStoreDep) -> Any:
    """Report whether the predictor and Redis are both reachable and ready."""
    checks: dict[str, str] = {}
    try:
        checks["predictor"] = "ok" if await predictor.ready(READY_TIMEOUT) else "not ready"
    except UpstreamError as exc:
        checks["predictor"] = exc.message
    try:
        await jobs.ping()
        checks["redis"] = "ok"
    except JobStoreUnavailable:
        checks["redis"] = "unreachable"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return error_response(503, "not_ready", f"Not ready: {failing}.", checks)
