"""The micro-batcher and the per-batch metrics, with the real scikit-learn pipeline."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from iris_predictor.core import Answer, PredictionCore
from iris_predictor.inference import IncompatibleModelError, LoadedModel, MicroBatcher
from iris_predictor.metrics import FEATURE_BUCKETS, PredictorMetrics
from iris_predictor.prediction_log import PredictionLog
from iris_predictor.recorder import PredictionRecorder
from iris_predictor.serving import ModelHolder
from iris_shared.http import Overloaded
from iris_shared.schemas import FEATURE_NAMES

ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 2.8, 4.3, 1.3], [4.9, 3.0, 1.4, 0.2]]
)


class CountingModel:
    """Wraps a fitted pipeline and remembers the size of every call."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.classes_ = model.classes_
        self.feature_names_in_ = model.feature_names_in_
        self.calls: list[int] = []

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        return np.asarray(self.model.predict_proba(rows))


def test_concurrent_requests_are_scored_together_and_each_gets_its_rows(
    loaded_model: LoadedModel,
) -> None:
    counting = CountingModel(loaded_model.model)
    model = replace(loaded_model, model=counting)

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(max_queued_rows=1000)
        try:
            return await asyncio.gather(
                *(batcher.score(model.batch_scorer, ROWS[i % 4 : i % 4 + 1]) for i in range(40))
            )
        finally:
            batcher.close()

    answers = asyncio.run(run())

    assert sum(counting.calls) == 40
    assert len(counting.calls) < 40, "every request was scored on its own"
    expected = loaded_model.model.predict_proba(ROWS)
    for i, answer in enumerate(answers):
        np.testing.assert_allclose(answer, expected[i % 4 : i % 4 + 1])


def test_requests_for_two_models_are_never_mixed(loaded_model: LoadedModel) -> None:
    class Constant:
        classes_ = loaded_model.model.classes_

        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            return np.tile([0.0, 0.0, 1.0], (len(rows), 1))

    other = replace(loaded_model, model=Constant())

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(max_queued_rows=1000)
        try:
            return await asyncio.gather(
                *(
                    batcher.score((loaded_model if i % 2 else other).batch_scorer, ROWS[:1])
                    for i in range(10)
                )
            )
        finally:
            batcher.close()

    for i, answer in enumerate(asyncio.run(run())):
        assert answer.argmax() == (0 if i % 2 else 2)


def test_a_model_with_a_numpy_scorer_is_scored_at_once_request_by_request(
    loaded_model: LoadedModel, tmp_path: Path
) -> None:
    metrics = PredictorMetrics()
    calls: list[int] = []
    metrics.model_called = calls.append  # type: ignore[method-assign]
    batcher = MicroBatcher(max_queued_rows=1000)
    recorder = PredictionRecorder(PredictionLog(tmp_path, 1 << 20, 1), metrics, queue_size=100)
    core = PredictionCore(ModelHolder("m", "production", loaded_model), batcher, recorder, metrics)

    async def run() -> list[Answer]:
        try:
            return await asyncio.gather(
                *(
                    core.predict(ROWS, request_id=str(i), trace_id=None, protocol="native")
                    for i in range(5)
                )
            )
        finally:
            batcher.close()

    answers = asyncio.run(run())

    assert loaded_model.fast_scorer is not None
    assert calls == [1] * 5, "no batching needed: each request is one call"
    for i, answer in enumerate(answers):
        assert answer.request_id == str(i)
        assert np.array_equal(answer.probabilities, loaded_model.model.predict_proba(ROWS))
        assert answer.labels() == list(loaded_model.model.predict(ROWS))


def test_answers_wait_for_a_log_that_fell_behind_and_every_row_is_logged(
    loaded_model: LoadedModel, tmp_path: Path
) -> None:
    metrics = PredictorMetrics()
    disk_free = threading.Event()

    class StalledLog(PredictionLog):
        def write(self, lines: list[bytes]) -> None:
            disk_free.wait(10)
            super().write(lines)

    recorder = PredictionRecorder(
        StalledLog(tmp_path, 1 << 20, 1), metrics, queue_size=100, max_backlog_rows=3
    )
    recorder.start()
    batcher = MicroBatcher(max_queued_rows=1000)
    core = PredictionCore(ModelHolder("m", "production", loaded_model), batcher, recorder, metrics)

    async def run() -> bool:
        for i in range(2):  # 4 rows waiting: more than 3
            await core.predict(ROWS[:2], request_id=str(i), trace_id=None, protocol="native")
        third = asyncio.ensure_future(
            core.predict(ROWS[:2], request_id="2", trace_id=None, protocol="native")
        )
        await asyncio.sleep(0.5)
        held = not third.done()
        disk_free.set()
        await asyncio.wait_for(third, 10)
        batcher.close()
        return held

    held_back = asyncio.run(run())
    recorder.stop()

    assert held_back, "the third request waited for the log"
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["request_id"] for line in lines) == ["0", "1", "2"]
    assert metrics.registry.get_sample_value("iris_prediction_log_waits_total") == 1
    assert metrics.registry.get_sample_value("iris_prediction_log_dropped_total") == 0
    assert recorder.backlog_rows == 0


def test_the_batcher_batches_any_function_of_rows() -> None:
    calls: list[int] = []

    def doubled(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return rows * 2

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(max_queued_rows=1000)
        try:
            return await asyncio.gather(
                *(batcher.score(doubled, ROWS[i : i + 1]) for i in range(4))
            )
        finally:
            batcher.close()

    answers = asyncio.run(run())

    assert sum(calls) == 4
    assert len(calls) < 4
    for i, answer in enumerate(answers):
        assert np.array_equal(answer, ROWS[i : i + 1] * 2)


def test_a_full_queue_refuses_at_once(loaded_model: LoadedModel) -> None:
    async def run() -> None:
        batcher = MicroBatcher(max_queued_rows=3)
        try:
            with pytest.raises(Overloaded):
                await batcher.score(loaded_model.batch_scorer, ROWS)
        finally:
            batcher.close()

    asyncio.run(run())


def test_a_model_for_other_columns_is_refused(loaded_model: LoadedModel) -> None:
    class Shuffled:
        classes_ = loaded_model.model.classes_
        feature_names_in_ = np.array(["petal_width", "petal_length", "sepal_width", "sepal_length"])

    with pytest.raises(IncompatibleModelError, match="expects columns"):
        replace(loaded_model, model=Shuffled())


def test_observed_features_are_exposed_as_one_observe_per_value_would() -> None:
    rows = np.array([[0.1, 49.0, 2.5, 0.5], [7.9, 0.5000001, 50.0, 10.0], [5.1, 3.5, 1.4, 0.2]])
    metrics = PredictorMetrics()
    single_registry = CollectorRegistry()
    single = Histogram(
        "iris_feature_value_cm",
        "Measurements received, in centimetres (watch for drift).",
        ["feature"],
        buckets=FEATURE_BUCKETS,
        registry=single_registry,
    )

    metrics.observe_features(rows)
    for row in rows:
        for feature, value in zip(FEATURE_NAMES, row, strict=True):
            single.labels(feature).observe(value)

    def feature_lines(exposition: bytes) -> list[str]:
        return [
            line
            for line in exposition.decode().splitlines()
            if line.startswith("iris_feature_value_cm") and "_created" not in line
        ]

    ours = feature_lines(metrics.exposition())
    assert ours == feature_lines(generate_latest(single_registry))
    assert len(ours) == len(FEATURE_NAMES) * (len(FEATURE_BUCKETS) + 3)
