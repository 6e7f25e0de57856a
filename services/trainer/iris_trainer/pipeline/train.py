"""Candidate models, each one scikit-learn Pipeline so preprocessing travels with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iris_trainer.pipeline.params import SplitParams, TrainingParams


@dataclass(frozen=True)
class Split:
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


@dataclass(frozen=True)
class Candidate:
    key: str
    registered_name: str
    hyperparameters: dict[str, Any]
    pipeline: Pipeline
    # Types MLflow's skops format must be told to trust when it loads the model back.
    trusted_types: tuple[str, ...] = ()


def split(features: pd.DataFrame, labels: pd.Series, params: SplitParams) -> Split:
    x_train, x_test, y_train, y_test = train_test_split(
        features,
        labels,
        test_size=params.test_size,
        random_state=params.random_state,
        stratify=labels,
    )
    return Split(x_train, x_test, y_train, y_test)


def build_candidates(params: TrainingParams) -> list[Candidate]:
    lr = params.models.logistic_regression
    rf = params.models.random_forest
    lr_hyper = lr.model_dump(exclude={"registered_name"})
    rf_hyper = rf.model_dump(exclude={"registered_name"})
    return [
        Candidate(
            "logistic_regression",
            lr.registered_name,
            lr_hyper,
            Pipeline(
                [("scaler", StandardScaler()), ("classifier", LogisticRegression(**lr_hyper))]
            ),
        ),
        Candidate(
            "random_forest",
            rf.registered_name,
            rf_hyper,
            # n_jobs=1: thread scheduling must not be able to change a single prediction.
            Pipeline([("classifier", RandomForestClassifier(n_jobs=1, **rf_hyper))]),
            trusted_types=("sklearn.tree._tree.Tree",),
        ),
    ]


def fit(candidate: Candidate, data: Split) -> Pipeline:
    return candidate.pipeline.fit(data.x_train, data.y_train)
