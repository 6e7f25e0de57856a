"""Drift scores and shadow scoring, with real scikit-learn models and real metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from prometheus_client import generate_latest
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier

from iris_predictor.feedback import Answered
from iris_predictor.inference import LoadedModel
from iris_predictor.metrics import PredictorMetrics
from iris_predictor.monitoring import DriftMonitor, ShadowScorer
from iris_predictor.serving import ModelHolder
from iris_shared.drift import PSI_ALERT_THRESHOLD, ReferenceProfile
from iris_shared.schemas import FEATURE_NAMES

IRIS = load_iris().data


def metric(metrics: PredictorMetrics, name: str, **labels: str) -> float | None:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def profiled(model: LoadedModel) -> LoadedModel:
    return replace(model, profile=ReferenceProfile.of(IRIS))


def test_inputs_like_the_training_data_score_no_drift_and_shifted_ones_do(
    loaded_model: LoadedModel,
) -> None:
    metrics = PredictorMetrics()
    holder = ModelHolder("m", "production", profiled(loaded_model))
    now = [0.0]
    monitor = DriftMonitor(holder, metrics, window_rows=300, interval_s=10, clock=lambda: now[0])

    monitor.add(IRIS)
    assert metric(metrics, "iris_feature_drift_psi", feature="petal_length") is None, (
        "scored before its interval"
    )
    now[0] = 11.0
    monitor.add(IRIS[:0])
    stable = {f: metric(metrics, "iris_feature_drift_psi", feature=f) for f in FEATURE_NAMES}
    assert all(value is not None and value < 0.1 for value in stable.values()), stable

    # Measured in millimetres by mistake: ten times the size.
    now[0] = 22.0
    monitor.add(IRIS * 10)
    monitor.add(IRIS * 10)
    shifted = {f: metric(metrics, "iris_feature_drift_psi", feature=f) for f in FEATURE_NAMES}
    assert all(value is not None and value > PSI_ALERT_THRESHOLD for value in shifted.values())


def test_the_window_keeps_only_the_latest_rows(loaded_model: LoadedModel) -> None:
    metrics = PredictorMetrics()
    holder = ModelHolder("m", "production", profiled(loaded_model))
    monitor = DriftMonitor(holder, metrics, window_rows=150, interval_s=1e9)

    monitor.add(IRIS * 10)
    for start in range(0, 150, 40):  # wraps around the ring several times
        monitor.add(IRIS[start : start + 40])
    scores = monitor.score()

    assert scores is not None
    assert max(scores.values()) < 0.1


def test_no_profile_or_too_few_rows_give_no_score(loaded_model: LoadedModel) -> None:
    metrics = PredictorMetrics()
    without = DriftMonitor(ModelHolder("m", "p", loaded_model), metrics, 300, 1e9)
    few = DriftMonitor(ModelHolder("m", "p", profiled(loaded_model)), metrics, 300, 1e9)

    without.add(IRIS)
    few.add(IRIS[:20])

    assert without.score() is None
    assert few.score() is None


def answered(model: LoadedModel, rows: np.ndarray, version: str = "7") -> Answered:
    return Answered(
        time=0.0,
        request_id="r-1",
        model_version=version,
        rows=rows,
        predicted=model.predict_proba(rows).argmax(axis=1),
        classes=model.classes,
    )


def test_the_challenger_scores_the_same_rows_and_agreement_is_counted(
    loaded_model: LoadedModel,
) -> None:
    metrics = PredictorMetrics()
    # A challenger that always says setosa: it agrees on the setosa rows only (the first 50).
    always_setosa = DummyClassifier(strategy="constant", constant="Iris-setosa")
    always_setosa.fit(IRIS, ["Iris-setosa", "Iris-versicolor", "Iris-virginica"] * 50)
    challenger = LoadedModel(
        model=always_setosa, info=loaded_model.info.model_copy(update={"version": "8"})
    )
    scorer = ShadowScorer(ModelHolder("m", "challenger", challenger), metrics, 4, store=None)

    counts = scorer.score([answered(loaded_model, IRIS)])

    assert counts == (50, 100)
    assert metric(metrics, "iris_shadow_predictions_total", model_version="8", agree="true") == 50
    assert metric(metrics, "iris_shadow_predictions_total", model_version="8", agree="false") == 100
    assert b"iris_shadow_inference_seconds_count 1.0" in generate_latest(metrics.registry)


def test_a_version_is_never_compared_with_itself(loaded_model: LoadedModel) -> None:
    scorer = ShadowScorer(ModelHolder("m", "c", loaded_model), PredictorMetrics(), 4, None)

    assert scorer.score([answered(loaded_model, IRIS, version=loaded_model.version)]) is None


def test_a_full_shadow_queue_drops_and_counts_instead_of_waiting(
    loaded_model: LoadedModel,
) -> None:
    metrics = PredictorMetrics()
    challenger = loaded_model.with_source("registry")
    scorer = ShadowScorer(ModelHolder("m", "c", challenger), metrics, queue_size=1, store=None)
    # Not started: nothing takes from the queue.

    for _ in range(3):
        scorer.submit([answered(loaded_model, IRIS[:1], version="6")])

    assert metric(metrics, "iris_shadow_dropped_total") == 2
