"""The numpy scorer of the default pipeline: used only where it equals scikit-learn exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from iris_predictor.inference import LoadedModel
from iris_predictor.linear import check_linear_scorer, linear_scorer
from iris_shared.schemas import FEATURE_NAMES

IRIS = load_iris()
FRAME = pd.DataFrame(IRIS.data, columns=list(FEATURE_NAMES))


def test_the_default_pipeline_is_scored_with_numpy_giving_scikit_learns_numbers(
    loaded_model: LoadedModel,
) -> None:
    rows = np.vstack([IRIS.data, np.random.default_rng(1).uniform(0.01, 50, (500, 4))])

    assert loaded_model.fast_scorer is not None
    for size in (1, 2, 32, len(rows)):
        frame = pd.DataFrame(rows[:size], columns=FRAME.columns)
        expected = loaded_model.model.predict_proba(frame)
        assert np.array_equal(loaded_model.predict_proba(rows[:size]), expected)


def test_without_a_scaler_and_with_scaler_options_it_still_agrees() -> None:
    labels = IRIS.target
    for model in (
        LogisticRegression(max_iter=500).fit(IRIS.data, labels),
        Pipeline([("s", StandardScaler(with_mean=False)), ("c", LogisticRegression(C=0.1))]).fit(
            IRIS.data, labels
        ),
        Pipeline(
            [("s", StandardScaler(with_std=False)), ("c", LogisticRegression(max_iter=500))]
        ).fit(IRIS.data, labels),
    ):
        scorer = linear_scorer(model)
        assert scorer is not None
        assert np.array_equal(scorer(IRIS.data), model.predict_proba(IRIS.data))


def test_other_models_are_left_to_scikit_learn(loaded_model: LoadedModel) -> None:
    labels = IRIS.target
    binary = IRIS.target[:100]
    others = [
        RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS.data, labels),
        LogisticRegression().fit(IRIS.data[:100], binary),
        Pipeline([("s", MinMaxScaler()), ("c", LogisticRegression())]).fit(IRIS.data, labels),
        Pipeline(
            [("a", StandardScaler()), ("b", StandardScaler()), ("c", LogisticRegression())]
        ).fit(IRIS.data, labels),
    ]

    for model in others:
        assert linear_scorer(model) is None, model
        # Not made for these: nothing to report.
        assert check_linear_scorer(model).mismatch is None
    forest = replace(loaded_model, model=others[0])
    assert forest.fast_scorer is None
    assert np.array_equal(forest.predict_proba(IRIS.data), others[0].predict_proba(IRIS.data))


def test_a_model_whose_numbers_differ_even_slightly_is_left_to_scikit_learn(
    loaded_model: LoadedModel,
) -> None:
    pipeline = loaded_model.model
    own = pipeline.predict_proba
    # As if scikit-learn changed how it computes: one ulp off in one place.
    pipeline.predict_proba = lambda rows: np.nextafter(own(rows), 1.0)

    try:
        assert linear_scorer(pipeline) is None
        # Said, not silent: GET /model, the log and a metric report it (test_app.py).
        mismatch = check_linear_scorer(pipeline).mismatch
        assert mismatch is not None
        assert "differ by up to" in mismatch
    finally:
        del pipeline.predict_proba
