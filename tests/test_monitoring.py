"""Whether the model is still right, on the real predictor process: answers kept for feedback,
drift scores against the training data, and the challenger scored in production's shadow."""

from __future__ import annotations

import re

import httpx
import pytest
import redis
from mlflow import MlflowClient

from iris_devstack.processes import wait_until
from iris_shared.feedback import FeedbackKeys, LabelledRow, StoredPrediction
from iris_shared.registry import CHALLENGER
from iris_shared.schemas import FEATURE_NAMES
from tests.support.core import JOBS_NAMESPACE
from tests.support.exposition import metric_sample

pytestmark = pytest.mark.integration

MODEL = "Iris-LogisticRegression"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
KEYS = FeedbackKeys(JOBS_NAMESPACE)


def test_every_answer_is_kept_for_feedback_under_its_request_id(
    predictor_url: str, redis_url: str
) -> None:
    one = httpx.post(f"{predictor_url}/predict", json=SETOSA)
    batch = httpx.post(f"{predictor_url}/predict/batch", json={"instances": [SETOSA, VIRGINICA]})
    assert one.status_code == batch.status_code == 200
    one_id, batch_id = one.json()["request_id"], batch.json()["request_id"]
    client = redis.Redis.from_url(redis_url)

    def stored(request_id: str) -> StoredPrediction | None:
        raw = client.get(KEYS.prediction(request_id))
        return StoredPrediction.decode(raw) if raw else None

    # Kept by the recorder thread once the answer has gone: soon, not at once, and by each
    # worker process for its own answers (the two may have gone to different workers).
    wait_until(
        lambda: stored(batch_id) is not None and stored(one_id) is not None,
        10,
        "both answers kept for feedback",
    )
    kept_one, kept_batch = stored(one_id), stored(batch_id)
    ttl = client.ttl(KEYS.prediction(one_id))
    client.close()

    assert kept_one is not None
    assert kept_one.model_version == one.json()["model_version"]
    assert kept_one.row_count == 1
    assert kept_one.features(0) == [SETOSA[f] for f in FEATURE_NAMES]
    assert kept_one.predicted_species(0) == "Iris-setosa"
    assert kept_batch is not None
    assert [kept_batch.predicted_species(row) for row in range(kept_batch.row_count)] == [
        p["predicted_species"] for p in batch.json()["predictions"]
    ]
    assert batch.json()["feedback_rows"] == 2
    assert 0 < ttl <= 7 * 24 * 3600


def test_a_spoofed_request_id_neither_overwrites_an_answer_nor_decides_what_feedback_joins(
    predictor_url: str, gateway_url: str, api_token: str, redis_url: str
) -> None:
    victim = httpx.post(f"{gateway_url}/predict", json=SETOSA)
    victim_id = victim.json()["request_id"]
    # The attacker reuses the victim's id, with other measurements.
    attack = httpx.post(
        f"{predictor_url}/predict", json=VIRGINICA, headers={"X-Request-ID": victim_id}
    )
    through_gateway = httpx.post(
        f"{gateway_url}/predict", json=VIRGINICA, headers={"X-Request-ID": victim_id}
    )

    # Ids are the server's: 128 random bits, never the client's, which only traces the request.
    for answer in (victim, attack, through_gateway):
        assert answer.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{32}", answer.json()["request_id"])
    assert attack.headers["X-Request-ID"] == through_gateway.headers["X-Request-ID"] == victim_id
    assert victim_id not in (attack.json()["request_id"], through_gateway.json()["request_id"])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # Each worker process keeps its own answers, a moment after answering.
    answer_keys = [KEYS.prediction(a.json()["request_id"]) for a in (victim, attack)]
    wait_until(lambda: client.exists(*answer_keys) == 2, 10, "answers kept")
    with redis.Redis.from_url(redis_url) as raw_client:
        kept = StoredPrediction.decode(raw_client.get(KEYS.prediction(victim_id)))
    assert kept.all_features() == [[SETOSA[f] for f in FEATURE_NAMES]]
    labelled_before = client.llen(KEYS.labelled)
    label = httpx.post(
        f"{gateway_url}/feedback",
        json={"request_id": victim_id, "actual_species": "Iris-setosa"},
        headers={"Authorization": f"Bearer {api_token}"},
    )
    rows = [LabelledRow.model_validate_json(r) for r in client.lrange(KEYS.labelled, 0, -1)]
    client.close()

    assert label.status_code == 202
    assert len(rows) == labelled_before + 1
    [joined] = [r for r in rows if r.request_id == victim_id]
    assert joined.features == [SETOSA[f] for f in FEATURE_NAMES]


def test_drift_is_scored_per_feature_against_the_training_data(predictor_url: str) -> None:
    # Enough rows for a score, spread like the training data (setosa and virginica alike).
    rows = [SETOSA, VIRGINICA] * 100
    assert httpx.post(f"{predictor_url}/predict/batch", json={"instances": rows}).status_code == 200

    def scores() -> dict[str, float | None]:
        text = httpx.get(f"{predictor_url}/metrics").text
        return {f: metric_sample(text, "iris_feature_drift_psi", feature=f) for f in FEATURE_NAMES}

    def scored() -> bool:
        # Scored every second, on the next rows after that.
        httpx.post(f"{predictor_url}/predict", json=SETOSA)
        return all(value is not None for value in scores().values())

    wait_until(scored, 20, "drift scores for every feature")
    assert all(value is not None and value >= 0 for value in scores().values())


def test_the_challenger_scores_in_the_shadow_and_shows_in_get_model(
    predictor_url: str, trained_registry: str
) -> None:
    client = MlflowClient(trained_registry)
    production = client.get_model_version_by_alias(MODEL, "production")
    # Another version of the same model: it must agree with production on every row.
    copy = client.create_model_version(
        MODEL,
        production.source,
        run_id=production.run_id,
        model_id=production.model_id or production.source.removeprefix("models:/"),
    )
    previous = None
    try:
        previous = client.get_model_version_by_alias(MODEL, CHALLENGER).version
    except Exception:
        previous = None
    client.set_registered_model_alias(MODEL, CHALLENGER, copy.version)
    try:

        def challenger_shown() -> dict | None:
            body = httpx.get(f"{predictor_url}/model").json()
            challenger = body.get("challenger")
            return body if challenger and challenger["version"] == str(copy.version) else None

        # Both worker processes follow the alias; ten reads reach both.
        wait_until(
            lambda: all(challenger_shown() for _ in range(10)), 30, "the challenger in GET /model"
        )
        body = challenger_shown()
        assert body is not None
        assert body["version"] == str(production.version), "production changed"
        assert body["challenger"]["alias"] == CHALLENGER
        answer = httpx.post(f"{predictor_url}/predict", json=SETOSA).json()
        assert answer["model_version"] == str(production.version)

        def agreed() -> float:
            httpx.post(f"{predictor_url}/predict/batch", json={"instances": [SETOSA, VIRGINICA]})
            text = httpx.get(f"{predictor_url}/metrics").text
            return (
                metric_sample(
                    text,
                    "iris_shadow_predictions_total",
                    model_version=str(copy.version),
                    agree="true",
                )
                or 0.0
            )

        wait_until(lambda: agreed() >= 2, 20, "shadow predictions counted")
        text = httpx.get(f"{predictor_url}/metrics").text
        assert (
            metric_sample(
                text,
                "iris_shadow_predictions_total",
                model_version=str(copy.version),
                agree="false",
            )
            is None
        )
        age = metric_sample(text, "iris_model_age_seconds", alias=CHALLENGER)
        assert age is not None
        assert age >= 0
    finally:
        if previous is None:
            client.delete_registered_model_alias(MODEL, CHALLENGER)
        else:
            client.set_registered_model_alias(MODEL, CHALLENGER, previous)

    if previous is None:
        wait_until(
            lambda: all(
                httpx.get(f"{predictor_url}/model").json()["challenger"] is None for _ in range(10)
            ),
            30,
            "the challenger gone from GET /model",
        )


def test_feedback_through_the_gateway_joins_the_predictors_answer(
    gateway_url: str, api_token: str
) -> None:
    headers = {"Authorization": f"Bearer {api_token}"}
    answer = httpx.post(f"{gateway_url}/predict", json=VIRGINICA).json()
    request_id = answer["request_id"]
    label = {"request_id": request_id, "actual_species": "Iris-virginica"}

    # The predictor keeps the answer once it has gone: the label may arrive a moment early.
    def accepted() -> httpx.Response | None:
        response = httpx.post(f"{gateway_url}/feedback", json=label, headers=headers)
        return response if response.status_code != 404 else None

    wait_until(lambda: accepted() is not None, 10, "the answer joinable")
    again = httpx.post(f"{gateway_url}/feedback", json=label, headers=headers)
    unknown = httpx.post(
        f"{gateway_url}/feedback", json={**label, "request_id": "never-answered"}, headers=headers
    )
    text = httpx.get(f"{gateway_url}/metrics").text

    assert again.status_code == 409
    assert unknown.status_code == 404
    version = answer["model_version"]
    correct = "true" if answer["predicted_species"] == "Iris-virginica" else "false"
    counted = metric_sample(text, "iris_feedback_total", model_version=version, correct=correct)
    assert counted is not None
    assert counted >= 1
    accuracy = metric_sample(text, "iris_live_accuracy", model_version=version)
    assert accuracy is not None
    assert 0 <= accuracy <= 1
