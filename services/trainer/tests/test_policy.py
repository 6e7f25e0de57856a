"""Code tests for the promotion policy, the parameters and the data bootstrap."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from iris_shared.jobs import ParamOverrides
from iris_shared.registry import CHALLENGER, PRODUCTION, GateOutcome, VersionTag
from iris_trainer.dataset import iris_v1_csv
from iris_trainer.pipeline.data import dvc_recorded_md5, md5_of
from iris_trainer.pipeline.params import InvalidParamsError, load_params
from iris_trainer.pipeline.registry import decide, recorded_decision

REPO_ROOT = Path(__file__).resolve().parents[3]


def gate(candidate: float, production: float | None, floor: float = 0.85):
    return decide(
        candidate_score=candidate,
        production_score=production,
        production_version=None if production is None else "1",
        metric="f1_macro",
        tolerance=0.02,
        floor=floor,
    )


def test_the_first_version_goes_to_production() -> None:
    decision = gate(0.5, None)
    assert decision.outcome == GateOutcome.FIRST_VERSION
    assert decision.aliases == [PRODUCTION]


def test_a_version_within_tolerance_becomes_challenger() -> None:
    decision = gate(0.93, 0.94)
    assert decision.outcome == GateOutcome.PASSED
    assert decision.aliases == [CHALLENGER]


def test_a_worse_version_gets_no_alias_and_says_why() -> None:
    decision = gate(0.90, 0.97)
    assert decision.outcome == GateOutcome.FAILED
    assert decision.aliases == []
    assert "worse than production v1" in decision.reason


def test_a_version_below_the_floor_fails_even_when_production_is_worse() -> None:
    decision = gate(0.80, 0.70)
    assert decision.outcome == GateOutcome.FAILED
    assert "below the floor" in decision.reason


def version(**tags: str) -> ModelVersion:
    return ModelVersion(
        "Iris-RandomForest", "2", 0, tags=[ModelVersionTag(k, v) for k, v in tags.items()]
    )


def test_a_recorded_gate_decision_is_read_back_with_its_aliases() -> None:
    tags = {
        VersionTag.GATE_COMPARED_WITH: "1",
        VersionTag.GATE_REASON: "f1_macro 0.93 vs production v1 0.93",
        VersionTag.GATE_OUTCOME: GateOutcome.PASSED,
    }

    decision = recorded_decision(version(**tags))

    assert decision is not None
    assert decision.outcome == GateOutcome.PASSED
    assert decision.aliases == [CHALLENGER]
    assert decision.reason == tags[VersionTag.GATE_REASON]
    assert decision.production_version == "1"


def test_a_gate_decision_without_its_outcome_was_not_completed() -> None:
    # The outcome is written last: a reason alone means an attempt stopped half-way.
    assert recorded_decision(version(**{VersionTag.GATE_REASON: "x"})) is None


def test_overrides_are_merged_into_params_and_change_the_fingerprint() -> None:
    base = load_params(REPO_ROOT / "params.yaml")
    tuned = load_params(
        REPO_ROOT / "params.yaml", {"models": {"random_forest": {"n_estimators": 7}}}
    )
    assert tuned.models.random_forest.n_estimators == 7
    assert tuned.models.logistic_regression == base.models.logistic_regression
    assert tuned.fingerprint() != base.fingerprint()
    assert load_params(REPO_ROOT / "params.yaml").fingerprint() == base.fingerprint()


def test_invalid_overrides_are_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidParamsError, match=r"models\.random_forest\.n_estimators"):
        load_params(REPO_ROOT / "params.yaml", {"models": {"random_forest": {"n_estimators": 0}}})
    with pytest.raises(InvalidParamsError, match="bogus"):
        load_params(REPO_ROOT / "params.yaml", {"bogus": 1})


def test_every_override_a_job_may_send_is_one_params_yaml_accepts() -> None:
    overrides = ParamOverrides.model_validate(
        {
            "split": {"test_size": 0.3, "random_state": 0},
            "models": {
                "logistic_regression": {"C": 0.5, "max_iter": 50},
                "random_forest": {"n_estimators": 5000, "max_depth": 1, "random_state": 2**32 - 1},
            },
        }
    )

    params = load_params(REPO_ROOT / "params.yaml", overrides.model_dump())

    assert params.split.test_size == 0.3
    assert params.models.random_forest.n_estimators == 5000
    assert params.models.logistic_regression.max_iter == 50


def test_a_job_override_left_out_keeps_the_params_yaml_value() -> None:
    overrides = ParamOverrides.model_validate({"models": {"random_forest": {"n_estimators": 9}}})

    params = load_params(REPO_ROOT / "params.yaml", overrides.model_dump())

    assert params.models.random_forest.n_estimators == 9
    assert (
        params.models.random_forest.max_depth
        == load_params(REPO_ROOT / "params.yaml").models.random_forest.max_depth
    )


def test_version_one_regenerates_to_the_md5_dvc_recorded() -> None:
    # If scikit-learn's bundled copy ever changed, a fresh clone could not bootstrap offline.
    assert md5_of(iris_v1_csv()) == dvc_recorded_md5(REPO_ROOT)
