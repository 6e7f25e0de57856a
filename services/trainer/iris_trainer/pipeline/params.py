"""params.yaml, typed; overrides (a job's or the CLI's `--set`) are merged in before validation.

The bounds are the ones a retrain job's overrides are checked against (iris_shared.jobs), so a
value a job may send is always one params.yaml accepts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from iris_shared.jobs import (
    InverseRegularisation,
    Iterations,
    Seed,
    TestSize,
    TreeCount,
    TreeDepth,
)
from iris_shared.registry import LOGISTIC_REGRESSION, RANDOM_FOREST
from iris_trainer.pipeline.data import DATA_RELATIVE_PATH


class InvalidParamsError(Exception):
    """params.yaml (or a job's overrides) does not describe a valid training run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Strict):
    # For the CLI and DVC only: a retrain job cannot set it (see iris_shared.jobs.ParamOverrides).
    path: str = DATA_RELATIVE_PATH


class SplitParams(_Strict):
    test_size: TestSize = 0.2
    random_state: Seed = 42


class LogisticRegressionParams(_Strict):
    registered_name: str = LOGISTIC_REGRESSION
    C: InverseRegularisation = 1.0
    max_iter: Iterations = 500


class RandomForestParams(_Strict):
    registered_name: str = RANDOM_FOREST
    n_estimators: TreeCount = 100
    max_depth: TreeDepth | None = 5
    random_state: Seed = 42


class ModelsParams(_Strict):
    logistic_regression: LogisticRegressionParams = LogisticRegressionParams()
    random_forest: RandomForestParams = RandomForestParams()


class GateParams(_Strict):
    metric: str = "f1_macro"
    tolerance: float = Field(0.02, ge=0)
    floor: float = Field(0.85, ge=0, le=1)


class MlflowParams(_Strict):
    experiment: str = "iris-classification"


class TrainingParams(_Strict):
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    models: ModelsParams = ModelsParams()
    gate: GateParams = GateParams()
    mlflow: MlflowParams = MlflowParams()

    def fingerprint(self) -> str:
        """A stable hash of everything that shapes a model (lineage tag `params_hash`)."""
        shaping = self.model_dump(include={"split", "models"})
        canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_params(path: Path, overrides: Mapping[str, Any] | None = None) -> TrainingParams:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise InvalidParamsError(f"{path} does not exist") from exc
    try:
        return TrainingParams.model_validate(_deep_merge(raw, overrides or {}))
    except ValidationError as exc:
        raise InvalidParamsError(f"Invalid training parameters: {describe_errors(exc)}") from exc


def describe_errors(exc: ValidationError) -> str:
    """Each problem as `dotted.field: reason`, without the offending input."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
