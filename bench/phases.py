"""What a run does to the stack while it measures.

`make bench`: a new version trained and swapped in under load, a retrain timed stage by stage,
the predictor's cold start. `make soak`: uploads that trickle one byte at a time, floods of
anonymous batches, and the predictor's graceful stop at the end. (The soak's Redis restart is in
bench/soak.py: it is timed against the retrain jobs the soak follows.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

from bench import loads
from bench.common import say
from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import REPO_ROOT, answers_post, http_ok, tls_context, wait_until
from iris_shared.jobs import TrainingStage

MOVE_AFTER_S, CONSECUTIVE_NEW_ANSWERS = 3.0, 10
RETRAIN_POLL_EVERY_S, RETRAIN_TIMEOUT_S = 0.1, 900.0
TRICKLING_CONNECTIONS, FLOOD_BATCHES, FLOOD_BATCH_ROWS = 1200, 120, 10_000
# The server closes an upload it gave up on (BODY_READ_TIMEOUT_S, 10 s); a byte sent after that
# would make TCP reset the connection and lose the answer, so the last goes well before.
TRICKLE_EVERY_S, LAST_TRICKLE_S = 5.0, 8.0


def served_version(url: str) -> str | None:
    try:
        # A new connection per poll (no shared client), so polls reach every worker process.
        response = httpx.get(url, timeout=2, verify=tls_context())
        return str(response.json()["version"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def hot_swap_under_load(stack: PrivateStack, to_version: str, interval: float) -> dict[str, Any]:
    """wrk drives the gateway while `production` moves to `to_version`; the predictor's
    GET /model is polled until CONSECUTIVE_NEW_ANSWERS answers in a row name it: each worker
    process swaps on its own, and polls on fresh connections land on whichever accepts."""
    one = loads.Body(stack.work / "bodies" / "one.json")
    gateway = loads.Load("gateway", f"{stack.gateway_url}/predict", one)
    from_version = stack.production_version()
    first_new = streak_start = None
    streak = polls = failed_polls = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(loads.run_wrk, gateway, MOVE_AFTER_S + 2 * interval + 4)
        time.sleep(MOVE_AFTER_S)
        stack.move_production_alias(to_version)
        moved = time.monotonic()
        say(f"moved production {from_version} -> {to_version} under load")
        while time.monotonic() - moved < 3 * interval + 5 and streak < CONSECUTIVE_NEW_ANSWERS:
            version = served_version(f"{stack.predictor_url}/model")
            # Timed on the answer, not the question: the conservative end of the interval.
            answered = round(time.monotonic() - moved, 3)
            polls, failed_polls = polls + 1, failed_polls + (version is None)
            if version == to_version:
                first_new = answered if first_new is None else first_new
                streak_start = answered if streak == 0 else streak_start
                streak += 1
            else:
                streak = 0
            time.sleep(0.05)
        result = load.result()
    return {
        "from_version": from_version,
        "to_version": to_version,
        "load": result,
        "predictor_poll_interval_s": interval,
        "first_new_answer_s": first_new,
        "all_new_answers_s": streak_start if streak >= CONSECUTIVE_NEW_ANSWERS else None,
        **{"polls": polls, "failed_polls": failed_polls, "failed_requests": result["failed"]},
        "alias_moved_after_load_start_s": MOVE_AFTER_S,
        "consecutive_answers_required": CONSECUTIVE_NEW_ANSWERS,
    }


def retrain_breakdown(stack: PrivateStack) -> dict[str, Any]:
    """Where a retrain's seconds go: a job submitted through the gateway, its progress polled.
    Polling sees each stage (iris_shared.jobs.TrainingStage) it catches; a stage shorter than
    the interval is missed and its time falls to the one before. When the job's result carries
    its own `stage_seconds`, those exact figures are reported beside."""
    headers = {"Authorization": f"Bearer {stack.token}"}
    phases: list[tuple[float, tuple[str, str | None]]] = []
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=10) as client:
        submitted = time.monotonic()
        job_id = client.post("/retrain").raise_for_status().json()["job_id"]
        job: dict[str, Any] = {}
        while time.monotonic() - submitted < RETRAIN_TIMEOUT_S:
            job = client.get(f"/jobs/{job_id}").json()
            progress, status = job.get("progress") or {}, str(job.get("status"))
            phase = (status, None)
            if status == "running" and progress.get("stage"):
                phase = (str(progress["stage"]), progress.get("model_name"))
            if not phases or phases[-1][1] != phase:
                phases.append((time.monotonic() - submitted, phase))
            if status in ("succeeded", "failed"):
                break
            time.sleep(RETRAIN_POLL_EVERY_S)
    durations = [(name, model, round(b - a, 3)) for (a, (name, model)), (b, _) in pairwise(phases)]
    polled: dict[str, float] = defaultdict(float)
    for name, _, seconds in durations:
        polled[name] += seconds
    steps = [{"phase": name, "model": model, "seconds": s} for name, model, s in durations]
    return {
        "job_id": job_id,
        "status": job.get("status"),
        "job_error": job.get("error"),
        "total_s": round(phases[-1][0], 2) if phases else None,
        "queued_s": round(polled["queued"], 3),
        # Running with no stage reported: before the first stage, or between attempts.
        "no_stage_s": round(polled["running"], 3),
        "reported_stage_seconds": (job.get("result") or {}).get("stage_seconds") or None,
        "polled_stage_seconds": {s.value: round(polled[s.value], 3) for s in TrainingStage},
        "poll_interval_s": RETRAIN_POLL_EVERY_S,
        "steps": steps,
        "job": job,
    }


def predictor_cold_start(stack: PrivateStack) -> dict[str, Any]:
    """From starting the predictor's processes (replicas: `predictor:*`) to its first 200 to a
    one-row `POST /predict`, timed as the peers' are, and when /readyz said it was ready."""
    stack.supervisorctl("stop", "predictor:*")
    url = stack.predictor_url
    predict = answers_post(f"{url}/predict", json.dumps(loads.FLOWER).encode(), loads.JSON)
    # `supervisorctl start` returns only after the program's startsecs: timed from the start
    # request instead, polling meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        start = pool.submit(stack.supervisorctl, "start", "predictor:*")
        try:
            ready_s = wait_until(http_ok(f"{url}/readyz"), timeout=180)
            answer_s = wait_until(predict, timeout=60, interval=0.02)
            seconds = time.monotonic() - started
        except TimeoutError:
            return {"seconds": None, "error": "no 200 to POST /predict within 240 s"}
        finally:
            start.result()
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    return {
        "seconds": round(seconds, 2),
        "ready_s": round(ready_s, 2),
        "after_ready_s": round(answer_s, 2),
        "model_version": ready.get("model_version"),
        "source": ready.get("source"),
        "how": "supervisorctl start predictor:* → first 200 to a one-row POST /predict",
    }


def train_next_version(stack: PrivateStack) -> tuple[str, float]:
    """Register a new version with the CLI (as `make train` does), from the checkout the stack
    trained its baseline from; its number and seconds."""
    started = time.monotonic()
    with (stack.logs / "train-v2.log").open("ab") as out:
        command = [str(Path(sys.executable).parent / "iris-mlops"), "train"]
        subprocess.run(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    return stack.latest_version(), round(time.monotonic() - started, 2)


def trickling_uploads(
    url: str, connections: int = TRICKLING_CONNECTIONS, within_s: float = 30.0
) -> dict[str, Any]:
    """Open `connections` uploads to POST /predict that send one byte every 5 s; the status
    each was answered with before the server closed it, and how long that took."""
    host, port = url.removeprefix("http://").split(":")

    async def upload() -> str:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            return f"connect: {type(exc).__name__}"
        writer.write(
            b"POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        opened = time.monotonic()
        try:
            read = asyncio.ensure_future(reader.read())
            while not read.done():
                await asyncio.wait([read], timeout=TRICKLE_EVERY_S)
                if not read.done() and time.monotonic() - opened < LAST_TRICKLE_S:
                    writer.write(b" ")
            answer = read.result()
        except (OSError, asyncio.IncompleteReadError) as exc:
            return f"transport: {type(exc).__name__}"
        finally:
            writer.close()
        head = answer.split(b"\r\n", 1)[0].split()
        return head[1].decode() if len(head) > 1 else "closed without an answer"

    async def all_uploads() -> list[str]:
        uploads = asyncio.gather(*(upload() for _ in range(connections)))
        return await asyncio.wait_for(uploads, within_s)

    started = time.monotonic()
    try:
        outcomes = Counter(asyncio.run(all_uploads()))
    except TimeoutError:
        outcomes = Counter({f"no answer within {within_s:g} s": connections})
    seen = {"outcomes": dict(outcomes), "answered_408": outcomes["408"]}
    return {"connections": connections} | seen | {"seconds": round(time.monotonic() - started, 1)}


def anonymous_flood(url: str, batches: int = FLOOD_BATCHES) -> dict[str, Any]:
    """POST `batches` 10,000-row batches, 4 at a time, without any credential."""
    body = loads.encoded({"instances": [loads.FLOWER] * FLOOD_BATCH_ROWS})

    def send(_: int) -> tuple[str, str | None]:
        try:
            answer = httpx.post(
                f"{url}/predict/batch", content=body, headers=loads.JSON, timeout=60
            )
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        answered = answer.json()["request_id"] if answer.status_code == 200 else None
        return str(answer.status_code), answered

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(send, range(batches)))
    # Every answered batch is logged like any other request.
    answered = [request_id for _, request_id in sent if request_id is not None]
    return {
        "batches": batches,
        "rows_each": FLOOD_BATCH_ROWS,
        "request_bytes_each": len(body),
        "outcomes": dict(Counter(status for status, _ in sent)),
        "answered_ids": answered,
        "rows_answered": len(answered) * FLOOD_BATCH_ROWS,
        "seconds": round(time.monotonic() - started, 1),
    }


def stop_predictor(stack: PrivateStack) -> dict[str, Any]:
    """supervisorctl stop: SIGTERM to the predictor's process group, SIGKILL only after
    stopwaitsecs; whether it came to that is in supervisord's own log."""
    started = time.monotonic()
    completed = stack.supervisorctl("stop", "predictor:*")  # replicas: a bare name matches none
    seconds = round(time.monotonic() - started, 2)
    log = stack.state / "logs" / "supervisord.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    mentions = [line for line in lines if "predictor" in line][-4:]
    return {
        "seconds": seconds,
        "supervisorctl": (completed.stdout + completed.stderr).strip(),
        "supervisord_log": mentions,
        "killed": any("SIGKILL" in m for m in mentions),
    }
