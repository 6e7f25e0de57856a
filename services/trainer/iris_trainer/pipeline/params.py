"""params.yaml, typed; job overrides are merged in before validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class InvalidParamsError(Exception):
    """params.yaml (or a job's overrides) does not describe a valid training run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Strict):
    path: str = "data/iris.csv"


class SplitParams(_Strict):
    test_size: float = Field(0.2, gt=0, lt=1)
    random_state: int = 42


class LogisticRegressionParams(_Strict):
    registered_name: str = "Iris-LogisticRegression"
    C: float = Field(1.0, gt=0)
    max_iter: int = Field(500, ge=1)


class RandomForestParams(_Strict):
    registered_name: str = "Iris-RandomForest"
    n_estimators: int = Field(100, ge=1, le=5000)
    max_depth: int | None = Field(5, ge=1)
    random_state: int = 42


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


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_params(path: Path, overrides: dict[str, Any] | None = None) -> TrainingParams:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise InvalidParamsError(f"{path} does not exist") from exc
    try:
        return TrainingParams.model_validate(_deep_merge(raw, overrides or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidParamsError(f"Invalid training parameters: {problems}") from exc
