"""Retrain jobs as `make soak` follows them through the gateway, the way a client would: each is
submitted with an Idempotency-Key (a 429 or 503 is tried again), the key is sent again after a
Redis restart, and `GET /jobs/<id>` is polled until the job ends. A job is lost when the
gateway forgets it (a 404 after its 202) or it never ends.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

FINISHED = ("succeeded", "failed")
# How long a replayed Idempotency-Key is tried again while the gateway answers "not now".
REPLAY_FOR_S = 30.0
SUBMIT_EVERY_S, REPLAY_EVERY_S = 3.0, 1.0


class RetrainJobs:
    """Every job of one run, on the run's clock; `event` puts a line on the run's timeline."""

    def __init__(
        self,
        gateway_url: str,
        token: str,
        clock: Callable[[], float],
        event: Callable[[str], float],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        # Shared by the thread that submits and the one that polls: httpx's pool is thread-safe.
        self.http = httpx.Client(
            base_url=gateway_url, headers=auth, timeout=10, transport=transport
        )
        self.clock, self.event = clock, event
        self.run_id = secrets.token_hex(4)
        self.lock = threading.Lock()
        self.jobs: list[dict[str, Any]] = []

    def close(self) -> None:
        self.http.close()

    def post(self, key: str) -> tuple[str, str | None, str | None]:
        """POST /retrain with an Idempotency-Key: the answer, the job id and its status."""
        try:
            response = self.http.post("/retrain", headers={"Idempotency-Key": key}, timeout=15)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None, None
        if response.status_code not in (200, 202):
            return str(response.status_code), None, None
        body = response.json()
        return str(response.status_code), str(body["job_id"]), str(body["status"])

    def track(self, label: str, key: str, job_id: str | None = None) -> dict[str, Any]:
        job = {"label": label, "idempotency_key": key, "submitted_s": self.clock()}
        job |= {"job_id": job_id, "submit_answers": [], "replays": [], "history": []}
        job |= {"not_found_at_s": [], "not_found_answers": 0, "unavailable_answers": 0}
        job |= {"poll_errors": Counter[str](), "registered": {}}
        job |= dict.fromkeys(("final_status", "ended_s", "error", "deliveries"))
        with self.lock:
            self.jobs.append(job)
        return job

    def submit(self, label: str, give_up_s: float) -> dict[str, Any]:
        """POST /retrain until accepted (any other answer is tried again every 3 s) or
        `give_up_s`."""
        job = self.track(label, f"soak-{self.run_id}-{label}")
        while True:
            answer, job["job_id"], job["final_status"] = self.post(job["idempotency_key"])
            job["submit_answers"].append(answer)
            if job["job_id"] is not None:
                self.event(f"job {label} submitted: {answer}, {job['job_id']}")
                return job
            if self.clock() > give_up_s:
                self.event(f"job {label} not accepted: {job['submit_answers']}")
                return job
            time.sleep(SUBMIT_EVERY_S)

    def replay(self, job: dict[str, Any]) -> None:
        """Send the job's Idempotency-Key again, as a client would: an answer that says "not
        now" (503, or no answer at all) is tried again every second for up to REPLAY_FOR_S,
        each attempt recorded. The last answer must be 200 and the same job."""
        give_up = self.clock() + REPLAY_FOR_S
        while True:
            answer, job_id, _ = self.post(job["idempotency_key"])
            same_job = job_id == job["job_id"] and answer == "200"
            job["replays"].append(
                {"t": self.clock(), "answer": answer, "job_id": job_id} | {"same_job": same_job}
            )
            try_again = answer == "503" or not answer.isdigit()
            if not try_again or self.clock() > give_up:
                break
            time.sleep(REPLAY_EVERY_S)
        if answer == "202" and job_id is not None:
            # The key was forgotten and a second job started: follow it as well.
            self.track(f"{job['label']} again", job["idempotency_key"], job_id)

    def open(self) -> list[dict[str, Any]]:
        """The jobs accepted that have not ended yet."""
        with self.lock:
            return [j for j in self.jobs if j["job_id"] and j["final_status"] not in FINISHED]

    def poll(self) -> None:
        """GET /jobs/<id> of every open job once: its stages as they change, how it ended and
        what it registered; a 404 and any other failure to answer are counted."""
        for job in self.open():
            try:
                response = self.http.get(f"/jobs/{job['job_id']}")
            except httpx.HTTPError as exc:
                job["poll_errors"][type(exc).__name__] += 1
                continue
            now, status = self.clock(), response.status_code
            if status == 404:
                job["not_found_answers"] += 1
                job["not_found_at_s"] = (job["not_found_at_s"] + [now])[:10]
                self.event(f"job {job['label']} answered 404")
            elif status == 503:
                job["unavailable_answers"] += 1
            elif status != 200:
                job["poll_errors"][f"HTTP {status}"] += 1
            else:
                self._record(job, response.json(), now)

    def _record(self, job: dict[str, Any], record: dict[str, Any], now: float) -> None:
        progress = record.get("progress") or {}
        step = {"status": record["status"], "stage": progress.get("stage")}
        step["model"] = progress.get("model_name")
        last = job["history"][-1] if job["history"] else {}
        if {k: last.get(k) for k in step} != step:
            job["history"].append({"t": now, **step})
        job["final_status"], job["deliveries"] = record["status"], record.get("deliveries")
        if record["status"] in FINISHED:
            job["ended_s"], job["error"] = now, record.get("error")
            models = (record.get("result") or {}).get("models") or {}
            job["registered"] = {
                name: {"version": m.get("version"), "gate": m.get("gate")}
                for name, m in models.items()
            }
            took = now - job["submitted_s"]
            self.event(f"job {job['label']} {record['status']} after {took:.1f} s")

    def finish(self) -> list[dict[str, Any]]:
        """Every job once the polling is over: how long it took, and whether it was lost."""
        for job in self.jobs:
            took = None if job["ended_s"] is None else round(job["ended_s"] - job["submitted_s"], 1)
            lost = job["not_found_answers"] > 0 or job["final_status"] not in FINISHED
            job |= {"poll_errors": dict(job["poll_errors"]), "seconds": took}
            job["lost"] = job["job_id"] is not None and lost
        return self.jobs
