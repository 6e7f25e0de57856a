"""The whole loop through the gateway: retrain → new version → promote → served, no restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from iris_devstack.processes import ManagedProcess, tls_context

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

MODEL = "Iris-LogisticRegression"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


def served_version(gateway_url: str) -> str | None:
    """The version every predictor process answers with, or None while they differ.

    Each process follows the alias on its own; ten answers in a row reach all of them.
    """
    versions = {
        httpx.post(f"{gateway_url}/predict", json=SETOSA, verify=tls_context())
        .json()
        .get("model_version")
        for _ in range(10)
    }
    return versions.pop() if len(versions) == 1 else None


def alias_version(tracking_uri: str, alias: str) -> str | None:
    response = httpx.get(
        f"{tracking_uri}/api/2.0/mlflow/registered-models/alias",
        params={"name": MODEL, "alias": alias},
    )
    return response.json()["model_version"]["version"] if response.status_code == 200 else None


def test_retrain_promote_and_serve_without_restart(
    gateway_url: str,
    api_token: str,
    trainer_worker: ManagedProcess,
    trained_registry: str,
) -> None:
    production_before = alias_version(trained_registry, "production")
    assert served_version(gateway_url) == production_before

    submitted = httpx.post(
        f"{gateway_url}/retrain",
        json={"params": {"models": {"random_forest": {"n_estimators": 20}}}},
        headers=bearer(api_token),
    )
    assert submitted.status_code == 202
    location = submitted.headers["Location"]

    statuses: list[str] = []
    progress_seen: list[dict[str, Any]] = []

    def finished() -> dict[str, Any] | None:
        job = httpx.get(f"{gateway_url}{location}", headers=bearer(api_token)).json()
        statuses.append(job["status"])
        if job["progress"]:
            progress_seen.append(job["progress"])
        return job if job["status"] in ("succeeded", "failed") else None

    job = eventually(finished, 300, "retrain job finished")
    assert job["status"] == "succeeded", job["error"]
    assert statuses[0] in ("queued", "running")
    assert "running" in statuses
    assert progress_seen, "no progress was reported while the job ran"
    assert job["submitted_at"] <= job["started_at"] <= job["finished_at"]
    new_version = job["result"]["models"][MODEL]["version"]
    assert int(new_version) > int(production_before)
    listed = httpx.get(f"{gateway_url}/jobs", params={"limit": 5}, headers=bearer(api_token)).json()
    assert job["job_id"] in [j["job_id"] for j in listed]

    try:
        promoted = httpx.post(
            f"{gateway_url}/promote", json={"model_version": new_version}, headers=bearer(api_token)
        )
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {
            "model_name": MODEL,
            "model_version": new_version,
            "alias": "production",
            "previous_version": production_before,
        }
        assert alias_version(trained_registry, "production") == new_version
        assert alias_version(trained_registry, "challenger") != new_version

        started = time.monotonic()
        eventually(lambda: served_version(gateway_url) == new_version, 30, "new version served")
        assert time.monotonic() - started < 30
        prediction = httpx.post(f"{gateway_url}/predict", json=SETOSA).json()
        assert prediction["model_version"] == new_version
        assert prediction["predicted_species"] == "Iris-setosa"
    finally:
        # Other tests share this registry and expect the version they started with.
        httpx.post(
            f"{gateway_url}/promote",
            json={"model_version": production_before},
            headers=bearer(api_token),
        )
        eventually(
            lambda: served_version(gateway_url) == production_before, 30, "original version back"
        )
