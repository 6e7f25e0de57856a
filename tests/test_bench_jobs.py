"""How `make soak` judges its retrain jobs, against a gateway that answers from a script: the
answers a real gateway gives only under faults (a forgotten job, a Redis restart) on demand."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench import jobs
from bench.jobs import RetrainJobs


class ScriptedGateway:
    """Answers POST /retrain and GET /jobs/<id> from lists, one answer per request in turn."""

    def __init__(self, retrain: list[httpx.Response], polls: list[httpx.Response]) -> None:
        self.answers = {"POST /retrain": iter(retrain), "GET /jobs/j1": iter(polls)}
        self.keys: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t"
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
        return next(self.answers[f"{request.method} {request.url.path}"])


def job_answer(status: str, **fields: Any) -> httpx.Response:
    return httpx.Response(200, json={"job_id": "j1", "status": status, **fields})


def follow(gateway: ScriptedGateway) -> RetrainJobs:
    clock: Iterator[float] = itertools.count(0.0, 1.0)
    return RetrainJobs(
        "http://gateway",
        "t",
        clock=lambda: next(clock),
        event=lambda what: 0.0,
        transport=httpx.MockTransport(gateway),
    )


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "SUBMIT_EVERY_S", 0.0)
    monkeypatch.setattr(jobs, "REPLAY_EVERY_S", 0.0)


def test_a_job_that_ends_records_its_stages_and_what_it_registered() -> None:
    gateway = ScriptedGateway(
        retrain=[
            httpx.Response(503),
            httpx.Response(202, json={"job_id": "j1", "status": "queued"}),
        ],
        polls=[
            job_answer("running", progress={"stage": "training", "model_name": "Iris-RF"}),
            job_answer("running", progress={"stage": "training", "model_name": "Iris-RF"}),
            job_answer(
                "succeeded",
                deliveries=1,
                result={"models": {"Iris-RF": {"version": "2", "gate": "passed"}}},
            ),
        ],
    )
    retrains = follow(gateway)
    job = retrains.submit("A", give_up_s=100.0)
    for _ in range(4):
        retrains.poll()  # the fourth finds no open job and asks nothing

    assert job["submit_answers"] == ["503", "202"]
    assert gateway.keys == [job["idempotency_key"]] * 2
    assert [step["status"] for step in job["history"]] == ["running", "succeeded"]
    assert job["registered"] == {"Iris-RF": {"version": "2", "gate": "passed"}}
    [finished] = retrains.finish()
    # The scripted clock ticks once a call: submitted at 0, ended at the third poll's 4.
    assert (finished["final_status"], finished["seconds"], finished["lost"]) == (
        "succeeded",
        4.0,
        False,
    )


def test_a_job_the_gateway_forgets_after_its_202_is_lost() -> None:
    gateway = ScriptedGateway(
        retrain=[httpx.Response(202, json={"job_id": "j1", "status": "queued"})],
        polls=[httpx.Response(404), job_answer("succeeded")],
    )
    retrains = follow(gateway)
    retrains.submit("B", give_up_s=100.0)
    retrains.poll()
    retrains.poll()

    [job] = retrains.finish()
    assert (job["not_found_answers"], job["final_status"], job["lost"]) == (1, "succeeded", True)


def test_a_replayed_key_is_tried_again_while_the_gateway_says_not_now() -> None:
    gateway = ScriptedGateway(
        retrain=[
            httpx.Response(202, json={"job_id": "j1", "status": "queued"}),
            httpx.Response(503),
            httpx.Response(200, json={"job_id": "j1", "status": "running"}),
        ],
        polls=[],
    )
    retrains = follow(gateway)
    job = retrains.submit("C", give_up_s=100.0)
    retrains.replay(job)

    assert [(r["answer"], r["same_job"]) for r in job["replays"]] == [("503", False), ("200", True)]
    assert len(retrains.jobs) == 1


def test_a_forgotten_key_that_starts_a_second_job_is_followed_too() -> None:
    gateway = ScriptedGateway(
        retrain=[
            httpx.Response(202, json={"job_id": "j1", "status": "queued"}),
            httpx.Response(202, json={"job_id": "j2", "status": "queued"}),
        ],
        polls=[],
    )
    retrains = follow(gateway)
    retrains.replay(retrains.submit("D", give_up_s=100.0))

    assert [(j["label"], j["job_id"]) for j in retrains.jobs] == [("D", "j1"), ("D again", "j2")]
    assert [j["label"] for j in retrains.open()] == ["D", "D again"]
