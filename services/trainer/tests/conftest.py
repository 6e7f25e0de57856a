"""The trainer's unit tests: no MLflow, Redis or other process; the pipeline runs in-process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iris_trainer.dataset import iris_v1_csv
from iris_trainer.pipeline.data import DATA_RELATIVE_PATH, Dataset, load_dataset, md5_of
from iris_trainer.pipeline.params import TrainingParams, load_params
from iris_trainer.pipeline.run import validated_split
from iris_trainer.pipeline.train import Split, build_candidates, fit

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class TrainedCandidates:
    params: TrainingParams
    data: Split
    # Keyed by candidate (logistic_regression, random_forest): fitted scikit-learn pipelines.
    models: dict[str, Any]


def repository_dataset() -> Dataset:
    """The checkout's data/iris.csv; before `make data` has run, the version 1 it regenerates."""
    if (REPO_ROOT / DATA_RELATIVE_PATH).exists():
        return load_dataset(REPO_ROOT)
    content = iris_v1_csv()
    return Dataset(content.decode(), md5_of(content), "iris_v1_csv()", None)


@pytest.fixture(scope="session")
def trained_candidates() -> TrainedCandidates:
    """Every candidate trained once, as the pipeline trains it, on the repository's data."""
    params = load_params(REPO_ROOT / "params.yaml")
    data, _ = validated_split(repository_dataset(), params)
    models = {candidate.key: fit(candidate, data) for candidate in build_candidates(params)}
    return TrainedCandidates(params, data, models)
