"""Liveness and readiness (GET /metrics comes with the service stack)."""

from __future__ import annotations

from typing import Any

import aiohttp
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from iris_gateway.jobs import JobStoreUnavailable
from iris_gateway.state import StateDep
from iris_gateway.upstream import UpstreamError
from iris_shared.http import DocstringRoute, error_response, error_responses

router = APIRouter(tags=["health"], route_class=DocstringRoute)

# Readiness probes run often; a slow upstream counts as not ready.
READY_TIMEOUT = aiohttp.ClientTimeout(total=2.0, connect=1.0)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Report that the process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(state: StateDep) -> Any:
    """Report whether the predictor and Redis are both reachable and ready."""
    checks: dict[str, str] = {}
    try:
        answer = await state.predictor.request("GET", "/readyz", timeout=READY_TIMEOUT)
        checks["predictor"] = "ok" if answer.status_code == 200 else "not ready"
    except UpstreamError as exc:
        checks["predictor"] = exc.message
    try:
        await state.jobs.ping()
        checks["redis"] = "ok"
    except JobStoreUnavailable:
        checks["redis"] = "unreachable"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, value in checks.items() if value != "ok")
    return error_response(503, "not_ready", f"Not ready: {failing}.", checks)
