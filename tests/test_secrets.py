"""The gateway's token opens the doors it guards and is never written to a log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_the_token_never_reaches_a_log(gateway_url: str, api_token: str, logs_dir: Path) -> None:
    good = {"Authorization": f"Bearer {api_token}"}
    # A wrong token that shares most of the real one: a log of refused attempts would show it.
    near_miss = {"Authorization": f"Bearer {api_token[:-2]}xx"}
    calls = [
        ("POST", "/retrain", {"params": {"split": {"test_size": 2}}}),
        ("GET", "/jobs", None),
        ("POST", "/promote", {"model_version": "99999"}),
        ("POST", "/feedback", {"request_id": "never-answered", "actual_species": "Iris-setosa"}),
    ]
    for method, path, body in calls:
        for headers in (good, near_miss):
            response = httpx.request(method, f"{gateway_url}{path}", json=body, headers=headers)
            assert response.status_code < 500, (path, response.text)
            assert api_token not in response.text

    logs = {path.name: path.read_text(errors="replace") for path in logs_dir.glob("*.log")}
    assert "gateway.log" in logs
    leaked = [name for name, text in logs.items() if api_token[:-2] in text]
    assert not leaked, f"the token is in {leaked}"
