"""Schemathesis against both services' OpenAPI schemas, on the real processes.

Whatever a client sends, valid or not, no answer is a 5xx caused by the input, and every
answer (status code, content type, headers, body) is one the schema documents.

The schemas are served by processes that fixtures start, so each test loads its schema and
drives Hypothesis itself (schemathesis' own lazy pytest loader does not support pytest 9).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case

from tests.support.gateway import start_gateway
from tests.support.processes import start_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 30


def fuzz(schema_url: str, headers: dict[str, str] | None = None) -> list[str]:
    """Fuzz every operation of the schema; return the operations that were checked."""
    checked = []
    for result in schemathesis.openapi.from_url(schema_url).get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def keeps_its_contract(case: Case) -> None:
            case.call_and_validate(headers=headers)

        keeps_its_contract()
        checked.append(f"{operation.method.upper()} {operation.path}")
    return checked


@pytest.fixture(scope="module")
def fuzz_gateway(
    logs_dir: Path, predictor_url: str, trained_registry: str, api_token: str
) -> Iterator[str]:
    """A gateway of its own: jobs go to a Redis no worker reads, and promotions name a model
    that does not exist, so fuzzing changes nothing other tests see."""
    redis_process, redis_url = start_redis(logs_dir)
    process, url = start_gateway(
        logs_dir,
        predictor_url,
        redis_url,
        trained_registry,
        api_token,
        name="gateway-fuzz",
        GATEWAY_DEFAULT_MODEL_NAME="Iris-Fuzz-No-Such-Model",
    )
    yield url
    process.stop()
    redis_process.stop()


def test_the_predictor_keeps_its_contract_whatever_it_is_sent(predictor_url: str) -> None:
    checked = fuzz(f"{predictor_url}/openapi.json")

    assert {"POST /predict", "POST /predict/batch", "GET /model"} <= set(checked)


def test_the_gateway_keeps_its_contract_whatever_it_is_sent(
    fuzz_gateway: str, api_token: str
) -> None:
    checked = fuzz(f"{fuzz_gateway}/openapi.json", {"Authorization": f"Bearer {api_token}"})

    assert {"POST /predict", "POST /retrain", "GET /jobs/{job_id}", "POST /promote"} <= set(checked)
