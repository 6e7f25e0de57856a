"""The retrain job contract: what a job may ask for, and the states the gateway reads back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from iris_shared.jobs import (
    JobKeys,
    JobProgress,
    JobStatus,
    ParamOverrides,
    RetrainRequest,
    TrainingResult,
    TrainingStage,
    job_from_record,
    record_fields,
)

EVERY_ALLOWED_OVERRIDE = {
    "split": {"test_size": 0.25, "random_state": 7},
    "models": {
        "logistic_regression": {"C": 0.5, "max_iter": 200},
        "random_forest": {"n_estimators": 50, "max_depth": 3, "random_state": 1},
    },
}


def problems(payload: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        RetrainRequest.model_validate(payload)
    return [".".join(map(str, error["loc"])) for error in refused.value.errors()]


def test_an_empty_request_retrains_on_the_checked_out_data() -> None:
    assert RetrainRequest.model_validate({}).model_dump() == {"data_rev": None, "params": None}


def test_every_allowed_parameter_is_accepted_and_sent_as_given() -> None:
    request = RetrainRequest.model_validate({"params": EVERY_ALLOWED_OVERRIDE})

    assert request.model_dump()["params"] == EVERY_ALLOWED_OVERRIDE
    assert RetrainRequest.model_validate_json(request.model_dump_json()) == request


def test_only_what_the_client_set_is_sent_on() -> None:
    # The worker merges what it receives into params.yaml: an unset field must not arrive as
    # null and wipe the file's value.
    request = RetrainRequest.model_validate(
        {"params": {"models": {"random_forest": {"n_estimators": 10}}}}
    )

    assert request.model_dump() == {
        "data_rev": None,
        "params": {"models": {"random_forest": {"n_estimators": 10}}},
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"data": {"path": ".env"}}, "params.data"),
        (
            {"models": {"random_forest": {"registered_name": "Other"}}},
            "params.models.random_forest.registered_name",
        ),
        ({"gate": {"floor": 0}}, "params.gate"),
        ({"mlflow": {"experiment": "x"}}, "params.mlflow"),
        ({"models": {"svm": {}}}, "params.models.svm"),
    ],
)
def test_parameters_outside_the_allow_list_are_refused_by_name(
    params: dict[str, Any], field: str
) -> None:
    assert problems({"params": params}) == [field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("split.test_size", 0),
        ("split.test_size", 1),
        ("split.random_state", -1),
        ("models.logistic_regression.C", 0),
        ("models.logistic_regression.C", float("inf")),
        ("models.logistic_regression.C", 1e7),
        ("models.logistic_regression.max_iter", 0),
        ("models.logistic_regression.max_iter", 10**9),
        ("models.random_forest.n_estimators", 5001),
        ("models.random_forest.max_depth", 0),
        ("models.random_forest.max_depth", 10**6),
        ("models.random_forest.random_state", 2**32),
        ("models.random_forest.n_estimators", "10"),
        ("models.random_forest.n_estimators", True),
    ],
)
def test_values_out_of_bounds_or_of_the_wrong_type_are_refused(field: str, value: Any) -> None:
    override: dict[str, Any] = {}
    *parents, leaf = field.split(".")
    node = override
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value

    assert problems({"params": override}) == [f"params.{field}"]


@pytest.mark.parametrize(
    "revision", ["HEAD", "HEAD~1", "HEAD^2", "main", "origin/main", "v1.0", "3f2c9a1", "a" * 200]
)
def test_git_revisions_are_accepted(revision: str) -> None:
    assert RetrainRequest(data_rev=revision).data_rev == revision


@pytest.mark.parametrize(
    "revision",
    [
        "",
        "-b",
        "--output=/tmp/x",
        "HEAD..main",
        "main...HEAD",
        "HEAD:data/iris.csv",
        "HEAD@{1}",
        "a b",
        "a;rm -rf /",
        "a" * 201,
    ],
)
def test_anything_but_a_single_git_revision_is_refused_naming_the_field(revision: str) -> None:
    assert problems({"data_rev": revision}) == ["data_rev"]


def test_a_record_written_by_one_side_reads_back_as_the_same_job_on_the_other() -> None:
    submitted = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    progress = JobProgress(stage=TrainingStage.training, step=3, total_steps=10)
    request = RetrainRequest.model_validate({"params": EVERY_ALLOWED_OVERRIDE})
    record = record_fields(
        status=JobStatus.running,
        submitted_at=submitted,
        parameters=request,
        progress=progress,
        deliveries=2,
    )

    assert all(isinstance(value, str) for value in record.values())
    job = job_from_record("job-1", record)
    assert job.status is JobStatus.running
    assert job.submitted_at == submitted
    assert job.progress == progress
    assert job.parameters == request
    assert job.deliveries == 2


def test_a_malformed_field_is_left_out_rather_than_hiding_the_job() -> None:
    job = job_from_record(
        "job-1", {"status": "failed", "progress": "{not json", "error": "worker lost"}
    )

    assert job.status is JobStatus.failed
    assert job.progress is None
    assert job.error == "worker lost"


def test_two_namespaces_share_no_key() -> None:
    first, second = JobKeys("stack-a"), JobKeys("stack-b")
    names = ("queue", "broker_prefix", "unacked_index", "index", "pending")

    for name in names:
        assert getattr(first, name) != getattr(second, name)
    assert first.record("x") != second.record("x")
    assert first.idempotency("k") != second.idempotency("k")
    assert first.unacked_index.startswith(first.broker_prefix)


def test_a_result_from_a_worker_without_stage_timings_still_reads() -> None:
    result = TrainingResult.model_validate({"data_md5": "d" * 32, "rows": 150, "models": {}})

    assert result.stage_seconds == {}


def test_overrides_alone_validate_like_the_request_field() -> None:
    assert ParamOverrides.model_validate(EVERY_ALLOWED_OVERRIDE).model_dump() == (
        EVERY_ALLOWED_OVERRIDE
    )
