"""Where a retrain's seconds go: a job submitted through the gateway, its progress polled.

The trainer reports its stage (iris_shared.jobs.TrainingStage) as the job's progress. Polling
sees each stage it catches; a stage shorter than the poll interval can be missed, and its time
then falls to the stage before it. MLflow logging, registration and the promotion gate all
happen while the stage says `registering`. When the job's result carries its own
`stage_seconds`, those exact figures are used instead.
"""

from __future__ import annotations

import time
from collections import defaultdict
from itertools import pairwise
from typing import Any

import httpx

from bench.local_stack import BenchStack
from iris_shared.jobs import TrainingStage

POLL_EVERY_S = 0.1
TIMEOUT_S = 900.0
FINISHED = {"succeeded", "failed"}


def _phase(job: dict[str, Any]) -> tuple[str, str | None]:
    progress = job.get("progress") or {}
    if job.get("status") == "running" and progress.get("stage"):
        return str(progress["stage"]), progress.get("model_name")
    return str(job.get("status")), None


def retrain_breakdown(stack: BenchStack) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {stack.token}"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=10) as client:
        submitted = time.monotonic()
        accepted = client.post("/retrain")
        accepted.raise_for_status()
        job_id = accepted.json()["job_id"]
        phases: list[tuple[float, tuple[str, str | None]]] = []
        job: dict[str, Any] = {}
        while time.monotonic() - submitted < TIMEOUT_S:
            job = client.get(f"/jobs/{job_id}").json()
            now = time.monotonic() - submitted
            phase = _phase(job)
            if not phases or phases[-1][1] != phase:
                phases.append((now, phase))
            if job.get("status") in FINISHED:
                break
            time.sleep(POLL_EVERY_S)
    total = phases[-1][0] if phases else None
    durations = [
        (name, model, round(end - start, 3))
        for (start, (name, model)), (end, _) in pairwise(phases)
    ]
    polled: dict[str, float] = defaultdict(float)
    for name, _, seconds in durations:
        polled[name] += seconds
    steps = [{"phase": n, "model": m, "seconds": s} for n, m, s in durations]
    reported = (job.get("result") or {}).get("stage_seconds") or None
    polled_stages = {stage.value: round(polled.get(stage.value, 0.0), 3) for stage in TrainingStage}
    return {
        "job_id": job_id,
        "status": job.get("status"),
        "job_error": job.get("error"),
        "total_s": None if total is None else round(total, 2),
        "queued_s": round(polled.get("queued", 0.0), 3),
        # Running with no stage reported: before the first stage, or between attempts.
        "no_stage_s": round(polled.get("running", 0.0), 3),
        "stage_seconds": reported or polled_stages,
        "stage_seconds_source": "job result" if reported else "polling",
        "reported_stage_seconds": reported,
        "polled_stage_seconds": polled_stages,
        "poll_interval_s": POLL_EVERY_S,
        "steps": steps,
        "job": job,
    }
