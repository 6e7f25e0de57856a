"""Schemathesis against both services' OpenAPI schemas, on the real processes, every phase.

Whatever a client sends, valid or not, no answer is a 5xx, and every answer (status code,
content type, headers, body) is one the schema documents. Every route is tested, `/retrain`,
`/promote` and the predictor's webhook included, in each of schemathesis' phases: the schema's
examples, coverage (boundary and invalid values of every keyword, unexpected methods, missing
parts), fuzzing, and stateful sequences that follow the schema's links (`POST /retrain` ->
`GET /jobs/{job_id}`; the predictor's schema has no links, so it has no stateful phase).

The run is schemathesis' own engine, the one `schemathesis run` drives (its pytest loader does
not support pytest 9), reading its events: each failed check, with the curl command that
reproduces it, fails the test. The services are a sandbox (`tests.support.sandbox`): what
fuzzing promotes, queues or labels touches nothing other tests see.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.run import PhaseName

from tests.support.sandbox import Sandbox, sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
# Fuzzing cases per operation and stateful scenarios per run. Coverage is as large as the
# schema makes it (every keyword's boundaries), examples as the schema's examples.
FUZZED_PER_OPERATION = 60
STATEFUL_SCENARIOS = 30
STATEFUL_MAX_STEPS = 8


@dataclass
class Run:
    seed: int
    operations: list[str]
    tested: dict[str, set[str]] = field(default_factory=dict)
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"schemathesis seed {self.seed}"]
        for (operation, check, title), sample in self.failures.items():
            lines.append(f"- {operation}: {check}: {title}\n  {sample}")
        lines.extend(f"- error: {error}" for error in self.errors)
        return "\n".join(lines)


def run_schemathesis(schema_url: str, headers: dict[str, str] | None = None) -> Run:
    """Every phase on every operation of the schema at `schema_url`."""
    config = schemathesis.Config.from_dict(
        {
            "workers": 1,
            "headers": headers or {},
            "warnings": False,
            "checks": {"enabled": False, **{check: {"enabled": True} for check in CHECKS}},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {
                    "enabled": True,
                    "generation": {"max-examples": FUZZED_PER_OPERATION},
                },
                "stateful": {
                    "enabled": True,
                    "max-steps": STATEFUL_MAX_STEPS,
                    "generation": {"max-examples": STATEFUL_SCENARIOS},
                },
            },
        }
    )
    schema = schemathesis.openapi.from_url(schema_url, config=config)
    run = Run(
        seed=config.seed,
        operations=[result.ok().label for result in schema.get_all_operations()],
    )
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tested = run.tested.setdefault(event.phase.value, set())
            tested.update(node.value.operation.label for node in event.recorder.cases.values())
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        key = (event.recorder.label, check.name, check.failure_info.failure.title)
                        run.failures.setdefault(key, check.failure_info.code_sample)
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            run.errors.append(repr(event.exception))
        elif isinstance(event, events.EngineFinished):
            run.failures.update(
                {("run", "after run", failure.title): failure.message for failure in event.failures}
            )
    return run


@pytest.fixture(scope="module")
def fuzz_sandbox(logs_dir: Path, trained_registry: str, api_token: str) -> Iterator[Sandbox]:
    with sandbox(logs_dir, trained_registry, api_token, "fuzz") as services:
        yield services


def test_the_predictor_keeps_its_contract_whatever_it_is_sent(fuzz_sandbox: Sandbox) -> None:
    run = run_schemathesis(f"{fuzz_sandbox.predictor_url}/openapi.json")

    assert not run.failures, run.report()
    assert not run.errors, run.report()
    assert {"POST /predict", "POST /predict/batch", "POST /webhooks/mlflow", "GET /model"} <= set(
        run.operations
    )
    for phase in (PhaseName.COVERAGE, PhaseName.FUZZING):
        assert run.tested[phase.value] == set(run.operations), phase
    assert {"POST /predict", "POST /predict/batch"} <= run.tested[PhaseName.EXAMPLES.value]


def test_the_gateway_keeps_its_contract_whatever_it_is_sent(
    fuzz_sandbox: Sandbox, api_token: str
) -> None:
    run = run_schemathesis(
        f"{fuzz_sandbox.gateway_url}/openapi.json", {"Authorization": f"Bearer {api_token}"}
    )

    assert not run.failures, run.report()
    assert not run.errors, run.report()
    assert {"POST /predict", "POST /retrain", "POST /promote", "POST /feedback"} <= set(
        run.operations
    )
    for phase in (PhaseName.COVERAGE, PhaseName.FUZZING):
        assert run.tested[phase.value] == set(run.operations), phase
    assert {"POST /retrain", "POST /promote", "POST /feedback"} <= run.tested[
        PhaseName.EXAMPLES.value
    ]
    assert {"POST /retrain", "GET /jobs/{job_id}"} <= run.tested[PhaseName.STATEFUL_TESTING.value]
