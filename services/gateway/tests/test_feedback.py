"""POST /feedback over real HTTP, against predictions written into a real Redis as the
predictor writes them: acceptance, conflicts, unknown ids, lists, live accuracy, Redis down."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from iris_gateway.feedback import RECORD_SCRIPT
from iris_shared.feedback import (
    STORED_HEAD_FIELDS,
    FeedbackKeys,
    LabelledRow,
    StoredPrediction,
)
from tests.support.exposition import metric_value

NAMESPACE = f"feedback-{uuid.uuid4().hex[:8]}"
KEYS = FeedbackKeys(NAMESPACE)
WINDOW_S = 3600
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.8, 4.4, 1.4]]
PREDICTED = ["Iris-setosa", "Iris-versicolor"]


@pytest.fixture(scope="module")
def gateway(
    start_gateway_app: Callable[..., str],
    stub_predictor: tuple[str, dict[str, Any]],
    unit_redis: str,
) -> str:
    return start_gateway_app(
        predictor_url=stub_predictor[0],
        REDIS_URL=unit_redis,
        JOBS_NAMESPACE=NAMESPACE,
        FEEDBACK_WINDOW=WINDOW_S,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scraped(gateway: str, name: str, **labels: str) -> float:
    return metric_value(httpx.get(f"{gateway}/metrics").text, name, **labels)


def new_version() -> str:
    """A model version no other test labels, so counters start at zero."""
    return str(uuid.uuid4().int % 10**9)


def store_prediction(
    client: redis.Redis, version: str, keys: FeedbackKeys = KEYS, ttl_s: int = WINDOW_S
) -> str:
    """Keep an answered request as the predictor does; returns its request id."""
    request_id = f"req-{uuid.uuid4()}"
    stored = StoredPrediction.from_rows(version, time.time(), ROWS, PREDICTED)
    client.set(keys.prediction(request_id), stored.encode(), ex=ttl_s)
    client.zadd(keys.predictions_index, {request_id: stored.time})
    return request_id


def test_a_label_is_accepted_counted_and_kept_for_training(
    gateway: str, token: str, redis_client: redis.Redis
) -> None:
    version = new_version()
    request_id = store_prediction(redis_client, version)
    before = redis_client.llen(KEYS.labelled)

    right = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": request_id, "actual_species": "Iris-setosa"},
        headers=auth(token),
    )

    assert right.status_code == 202
    assert right.json() == {"request_id": request_id, "row": 0, "outcome": "accepted"}
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="true") == 1
    assert scraped(gateway, "iris_live_accuracy", model_version=version) == 1.0

    wrong = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": request_id, "row": 1, "actual_species": "Iris-virginica"},
        headers=auth(token),
    )

    assert wrong.status_code == 202
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="false") == 1
    assert scraped(gateway, "iris_live_accuracy", model_version=version) == 0.5
    assert redis_client.lrange(KEYS.outcomes(version), 0, -1) == ["0", "1"]
    kept = [
        LabelledRow.model_validate_json(raw) for raw in redis_client.lrange(KEYS.labelled, 0, -1)
    ]
    assert len(kept) == before + 2
    assert (kept[-1].request_id, kept[-1].row, kept[-1].model_version) == (request_id, 1, version)
    assert kept[-1].features == ROWS[1]
    assert (kept[-1].predicted_species, kept[-1].actual_species) == (
        "Iris-versicolor",
        "Iris-virginica",
    )
    assert abs(kept[-1].labelled_at - time.time()) < 60
    # The mark that refuses a second label expires with the window.
    assert 0 < redis_client.ttl(KEYS.answered(request_id, 1)) <= WINDOW_S


def test_a_second_label_of_the_same_row_is_a_conflict(
    gateway: str, token: str, redis_client: redis.Redis
) -> None:
    version = new_version()
    request_id = store_prediction(redis_client, version)
    body = {"request_id": request_id, "actual_species": "Iris-setosa"}

    first = httpx.post(f"{gateway}/feedback", json=body, headers=auth(token))
    again = httpx.post(
        f"{gateway}/feedback",
        json={**body, "actual_species": "Iris-virginica"},
        headers=auth(token),
    )

    assert first.status_code == 202
    assert again.status_code == 409
    assert again.json()["error"] == "feedback_already_given"
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="true") == 1
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="false") == 0
    assert redis_client.llen(KEYS.outcomes(version)) == 1


def test_an_unknown_request_or_row_is_404(
    gateway: str, token: str, redis_client: redis.Redis
) -> None:
    request_id = store_prediction(redis_client, new_version())

    unknown = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": "never-answered", "actual_species": "Iris-setosa"},
        headers=auth(token),
    )
    beyond = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": request_id, "row": 2, "actual_species": "Iris-setosa"},
        headers=auth(token),
    )

    assert unknown.status_code == 404
    assert unknown.json()["error"] == "prediction_not_found"
    assert "never-answered" in unknown.json()["message"]
    assert beyond.status_code == 404
    assert beyond.json()["error"] == "prediction_not_found"
    assert not redis_client.exists(KEYS.answered(request_id, 2))


def test_an_answer_kept_as_json_before_the_packed_format_still_takes_its_label(
    gateway: str, token: str, redis_client: redis.Redis
) -> None:
    version, request_id = new_version(), f"req-{uuid.uuid4()}"
    kept_before = {
        "model_version": version,
        "time": time.time(),
        "rows": ROWS,
        "predicted_species": PREDICTED,
    }
    redis_client.set(KEYS.prediction(request_id), json.dumps(kept_before), ex=WINDOW_S)

    answer = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": request_id, "row": 1, "actual_species": "Iris-versicolor"},
        headers=auth(token),
    )

    assert answer.status_code == 202
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="true") == 1
    labelled = LabelledRow.model_validate_json(redis_client.lrange(KEYS.labelled, -1, -1)[0])
    assert (labelled.request_id, labelled.features) == (request_id, ROWS[1])


def test_the_script_reads_the_stored_head_by_the_contract_names() -> None:
    for name in ("model_version", "classes", "row_count"):
        assert name in STORED_HEAD_FIELDS
        assert f"stored.{name}" in RECORD_SCRIPT or f"head.{name}" in RECORD_SCRIPT
    assert "$" not in RECORD_SCRIPT


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_feedback_requires_the_token(
    gateway: str, redis_client: redis.Redis, headers: dict[str, str]
) -> None:
    request_id = store_prediction(redis_client, new_version())

    response = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": request_id, "actual_species": "Iris-setosa"},
        headers=headers,
    )

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert not redis_client.exists(KEYS.answered(request_id, 0))


def test_a_list_reports_each_label_in_order(
    gateway: str, token: str, redis_client: redis.Redis
) -> None:
    version = new_version()
    request_id = store_prediction(redis_client, version)
    items = [
        {"request_id": request_id, "row": 0, "actual_species": "Iris-setosa"},
        {"request_id": request_id, "row": 0, "actual_species": "Iris-setosa"},
        {"request_id": request_id, "row": 1, "actual_species": "Iris-versicolor"},
        {"request_id": "never-answered", "actual_species": "Iris-setosa"},
        {"request_id": request_id, "row": 5, "actual_species": "Iris-setosa"},
    ]

    response = httpx.post(f"{gateway}/feedback", json=items, headers=auth(token))

    assert response.status_code == 202
    body = response.json()
    assert [r["outcome"] for r in body["results"]] == [
        "accepted",
        "duplicate",
        "accepted",
        "not_found",
        "not_found",
    ]
    assert [(r["request_id"], r["row"]) for r in body["results"]] == [
        (i["request_id"], i.get("row", 0)) for i in items
    ]
    assert (body["accepted"], body["duplicate"], body["not_found"]) == (2, 1, 2)
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="true") == 2
    assert scraped(gateway, "iris_live_accuracy", model_version=version) == 1.0


def test_malformed_labels_are_400_naming_the_field(gateway: str, token: str) -> None:
    one = httpx.post(
        f"{gateway}/feedback",
        json={"request_id": "abc", "actual_species": "Iris-rose"},
        headers=auth(token),
    )
    in_list = httpx.post(
        f"{gateway}/feedback",
        json=[
            {"request_id": "abc", "actual_species": "Iris-setosa"},
            {"request_id": "abc", "actual_species": "setosa"},
        ],
        headers=auth(token),
    )
    empty = httpx.post(f"{gateway}/feedback", json=[], headers=auth(token))
    too_many = httpx.post(
        f"{gateway}/feedback",
        json=[{"request_id": "abc", "actual_species": "Iris-setosa"}] * 1001,
        headers=auth(token),
    )
    not_json = httpx.post(
        f"{gateway}/feedback",
        content=b"{",
        headers={**auth(token), "Content-Type": "application/json"},
    )
    rows_not_numbers = [
        httpx.post(
            f"{gateway}/feedback",
            json={"request_id": "abc", "row": row, "actual_species": "Iris-setosa"},
            headers=auth(token),
        )
        for row in (False, "1", 1.5)
    ]

    assert one.status_code == 400
    assert one.json()["error"] == "validation_error"
    assert [p["field"] for p in one.json()["detail"]] == ["actual_species"]
    assert in_list.status_code == 400
    assert [p["field"] for p in in_list.json()["detail"]] == ["1.actual_species"]
    assert empty.status_code == 400
    assert too_many.status_code == 400
    assert not_json.status_code == 400
    assert not_json.json()["error"] == "malformed_json"
    for answer in rows_not_numbers:
        assert answer.status_code == 400
        assert [p["field"] for p in answer.json()["detail"]] == ["row"]


def test_live_accuracy_covers_the_last_labels_only_and_the_kept_rows_are_capped(
    start_gateway_app: Callable[..., str], unit_redis: str, token: str, redis_client: redis.Redis
) -> None:
    namespace = f"window-{uuid.uuid4().hex[:8]}"
    keys = FeedbackKeys(namespace)
    gateway = start_gateway_app(
        REDIS_URL=unit_redis,
        JOBS_NAMESPACE=namespace,
        live_accuracy_window=3,
        max_labelled_rows=3,
    )
    version = new_version()
    ids = [store_prediction(redis_client, version, keys) for _ in range(4)]
    # Oldest first: wrong, then three right.
    labels = ["Iris-virginica", "Iris-setosa", "Iris-setosa", "Iris-setosa"]
    for request_id, species in zip(ids, labels, strict=True):
        response = httpx.post(
            f"{gateway}/feedback",
            json={"request_id": request_id, "actual_species": species},
            headers=auth(token),
        )
        assert response.status_code == 202

    assert scraped(gateway, "iris_live_accuracy", model_version=version) == 1.0
    assert redis_client.lrange(keys.outcomes(version), 0, -1) == ["1", "1", "1"]
    # The labelled list stops taking rows when full (its oldest rows wait for add-feedback).
    kept = [
        LabelledRow.model_validate_json(raw) for raw in redis_client.lrange(keys.labelled, 0, -1)
    ]
    assert [row.request_id for row in kept] == ids[:3]
    assert scraped(gateway, "iris_feedback_total", model_version=version, correct="true") == 3


def test_redis_down_gives_503_quickly(
    start_gateway_app: Callable[..., str], stub_predictor: tuple[str, dict[str, Any]], token: str
) -> None:
    gateway = start_gateway_app(predictor_url=stub_predictor[0])  # REDIS_URL: a closed port

    for body in (
        {"request_id": "abc", "actual_species": "Iris-setosa"},
        [{"request_id": "abc", "actual_species": "Iris-setosa"}],
    ):
        started = time.monotonic()
        response = httpx.post(f"{gateway}/feedback", json=body, headers=auth(token))
        assert response.status_code == 503
        assert response.json()["error"] == "feedback_unavailable"
        assert int(response.headers["Retry-After"]) > 0
        assert time.monotonic() - started < 2


def test_openapi_documents_one_label_or_a_list(gateway: str) -> None:
    spec = httpx.get(f"{gateway}/openapi.json").json()
    operation = spec["paths"]["/feedback"]["post"]

    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0] == {"$ref": "#/components/schemas/Feedback"}
    assert body["oneOf"][1]["maxItems"] == 1000
    assert "examples" in spec["components"]["schemas"]["Feedback"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"202", "400", "401", "404", "409", "503"} <= set(operation["responses"])
    assert "BulkFeedbackResult" in spec["components"]["schemas"]
