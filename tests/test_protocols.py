"""The predictor speaks the protocols existing clients use, tested with those clients.

- Open Inference Protocol V2 with tritonclient[http] (its own environment, see
  tests/support/protocol_clients.py), JSON and binary tensors both ways.
- MLflow's scoring protocol with MLflow's ScoringServerClient, and the bodies it documents.

Every protocol's answer is recorded as a native one is: a prediction log line with the
protocol and the server's request id, and the answer kept in Redis for feedback under that id.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis

from iris_predictor.prediction_log import log_files
from iris_shared.feedback import FeedbackKeys, StoredPrediction
from iris_shared.schemas import FEATURE_NAMES
from tests.support.core import JOBS_NAMESPACE
from tests.support.predictor import PredictorService
from tests.support.protocol_clients import TritonClient, scoring_client

pytestmark = [pytest.mark.integration]

MODEL = "Iris-LogisticRegression"
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
VERSICOLOR = [5.9, 2.8, 4.3, 1.3]
ROWS = [SETOSA, VIRGINICA, VERSICOLOR]
SPECIES = ["Iris-setosa", "Iris-virginica", "Iris-versicolor"]
KEYS = FeedbackKeys(JOBS_NAMESPACE)


def native_probabilities(url: str) -> np.ndarray:
    instances = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in ROWS]
    answer = httpx.post(f"{url}/predict/batch", json={"instances": instances}, timeout=30)
    classes = ["Iris-setosa", "Iris-versicolor", "Iris-virginica"]
    return np.array(
        [[p["probabilities"][c] for c in classes] for p in answer.json()["predictions"]]
    )


def kept(redis_url: str, request_id: str) -> StoredPrediction:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while (raw := client.get(KEYS.prediction(request_id))) is None:
        assert time.monotonic() < deadline, f"answer {request_id} was never kept"
        time.sleep(0.05)
    return StoredPrediction.decode(raw)


def log_line(service: PredictorService, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        for path in log_files(service.prediction_log_dir):
            for line in path.read_text().splitlines():
                if request_id in line:
                    document: dict[str, Any] = json.loads(line)
                    if document["request_id"] == request_id:
                        return document
        assert time.monotonic() < deadline, f"no log line for {request_id}"
        time.sleep(0.05)


# --- Open Inference Protocol V2, with tritonclient ----------------------------------------


@pytest.mark.parametrize(
    ("datatype", "binary_input", "binary_output"),
    [("FP32", False, False), ("FP64", False, False), ("FP32", True, True), ("FP64", True, False)],
)
def test_tritonclient_infers_in_json_and_binary(
    predictor_service: PredictorService,
    triton_client: TritonClient,
    datatype: str,
    binary_input: bool,
    binary_output: bool,
) -> None:
    outputs = [
        {"name": "predict", "binary": binary_output},
        {"name": "predict_proba", "binary": binary_output},
    ]
    answer = triton_client.one(
        predictor_service.url,
        {
            "call": "infer",
            "model": MODEL,
            "rows": ROWS,
            "datatype": datatype,
            "binary_input": binary_input,
            "outputs": outputs,
            "request_id": "client-7",
        },
    )["result"]

    assert answer["outputs"]["predict"] == SPECIES
    expected = native_probabilities(predictor_service.url)
    if datatype == "FP64":
        np.testing.assert_array_equal(answer["outputs"]["predict_proba"], expected)
    else:
        np.testing.assert_allclose(answer["outputs"]["predict_proba"], expected, atol=1e-5)
    assert sorted(answer["binary_outputs"]) == (
        ["predict", "predict_proba"] if binary_output else []
    )
    response = answer["response"]
    assert response["id"] == "client-7"
    assert response["model_name"] == MODEL
    assert response["model_version"] == "1"
    assert len(response["parameters"]["request_id"]) == 32


def test_tritonclient_gets_only_the_outputs_it_asks_for(
    predictor_service: PredictorService, triton_client: TritonClient
) -> None:
    answer = triton_client.one(
        predictor_service.url,
        {
            "call": "infer",
            "model": MODEL,
            "rows": [SETOSA],
            "outputs": [{"name": "predict", "binary": True}],
        },
    )["result"]

    assert answer["outputs"] == {"predict": ["Iris-setosa"]}


def test_tritonclient_sees_health_metadata_and_the_served_versions(
    predictor_service: PredictorService, triton_client: TritonClient
) -> None:
    live, ready, model_ready, metadata, version_ready, old_version, unknown = triton_client.run(
        predictor_service.url,
        [
            {"call": "is_server_live"},
            {"call": "is_server_ready"},
            {"call": "is_model_ready", "model": MODEL},
            {"call": "get_model_metadata", "model": MODEL},
            {"call": "is_model_ready", "model": MODEL, "version": "1"},
            {"call": "get_model_metadata", "model": MODEL, "version": "99"},
            {"call": "get_model_metadata", "model": "Iris-Nothing"},
        ],
    )

    assert (live["result"], ready["result"], model_ready["result"]) == (True, True, True)
    assert version_ready["result"] is True
    described = metadata["result"]
    assert described["name"] == MODEL
    assert described["inputs"][0]["shape"] == [-1, 4]
    assert {o["name"] for o in described["outputs"]} == {"predict", "predict_proba"}
    assert old_version["error"]["status"] == "404"
    assert "served versions: 1" in old_version["error"]["message"]
    assert unknown["error"]["status"] == "404"
    assert MODEL in unknown["error"]["message"]


@pytest.mark.parametrize(
    "rows", [[[5.1, 3.5, 1.4, -1.0]], [[5.1, 3.5, 1.4, 80.0]], [[5.1, 3.5, 1.4, float("nan")]]]
)
def test_tritonclient_is_told_what_is_wrong_with_bad_rows(
    predictor_service: PredictorService, triton_client: TritonClient, rows: list[list[float]]
) -> None:
    for binary_input in (False, True):
        refused = triton_client.one(
            predictor_service.url,
            {"call": "infer", "model": MODEL, "rows": rows, "binary_input": binary_input},
        )

        assert refused["error"]["status"] == "400", refused
        # A NaN has no JSON spelling: tritonclient writes one anyway, which is refused as such.
        if binary_input or not np.isnan(rows[0][3]):
            assert "petal_width" in refused["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"inputs": []}',
        b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["a", 2, 3, 4]}]}',
        # An integer no float can hold (found by a property test).
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1%s, 2, 3, 4]}]}'
        % (b"0" * 400),
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],'
        b' "outputs": [{"name": "nope"}]}',
    ],
)
def test_bad_v2_bodies_are_400_with_the_protocols_error(
    predictor_service: PredictorService, body: bytes
) -> None:
    response = httpx.post(
        f"{predictor_service.url}/v2/models/{MODEL}/infer",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert isinstance(response.json()["error"], str)


def test_a_binary_body_shorter_than_announced_is_400(predictor_service: PredictorService) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP64",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"{predictor_service.url}/v2/models/{MODEL}/infer",
        content=header + np.array(SETOSA[:3], dtype="<f8").tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

    assert response.status_code == 400
    assert "binary_data_size" in response.json()["error"]


def test_a_v2_answer_is_logged_and_kept_for_feedback(
    predictor_service: PredictorService, triton_client: TritonClient, redis_url: str
) -> None:
    answer = triton_client.one(
        predictor_service.url,
        {"call": "infer", "model": MODEL, "rows": [VIRGINICA, SETOSA], "binary_input": True},
    )["result"]
    request_id = answer["response"]["parameters"]["request_id"]

    stored = kept(redis_url, request_id)
    line = log_line(predictor_service, request_id)

    assert stored.all_predicted_species() == ["Iris-virginica", "Iris-setosa"]
    # Sent as FP32 (tritonclient's usual), kept as the predictor scored them.
    np.testing.assert_allclose(stored.all_features(), [VIRGINICA, SETOSA], rtol=1e-6)
    assert line["protocol"] == "v2"
    assert line["predicted_species"] == ["Iris-virginica", "Iris-setosa"]


# --- MLflow's scoring protocol ------------------------------------------------------------


def test_mlflows_own_client_scores_a_dataframe(predictor_service: PredictorService) -> None:
    client = scoring_client(predictor_service.url)
    client.wait_server_ready(timeout=30)
    # Columns in another order than the model's: matched by name.
    frame = pd.DataFrame(ROWS, columns=list(FEATURE_NAMES))[list(reversed(FEATURE_NAMES))]

    answer = client.invoke(frame)

    assert answer["predictions"] == SPECIES
    assert client.get_version()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "application/json",
            {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": ROWS}},
        ),
        (
            "application/json",
            {"dataframe_records": [dict(zip(FEATURE_NAMES, r, strict=True)) for r in ROWS]},
        ),
        ("application/json", {"instances": ROWS}),
        ("application/json", {"inputs": ROWS}),
        (
            "application/json",
            {"inputs": {name: [r[i] for r in ROWS] for i, name in enumerate(FEATURE_NAMES)}},
        ),
        ("text/csv", pd.DataFrame(ROWS, columns=list(FEATURE_NAMES)).to_csv(index=False)),
        ("text/csv; charset=utf-8", pd.DataFrame(ROWS, columns=list(FEATURE_NAMES)).to_csv()),
        (
            "text/csv",
            pd.DataFrame(ROWS, columns=list(FEATURE_NAMES)).to_csv(
                index=False, lineterminator="\r"
            ),
        ),
    ],
)
def test_invocations_take_every_body_mlflow_serve_takes(
    predictor_service: PredictorService, content_type: str, body: Any
) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = httpx.post(
        f"{predictor_service.url}/invocations",
        content=content,
        headers={"Content-Type": content_type},
    )

    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": SPECIES}
    assert len(response.headers["Iris-Request-ID"]) == 32


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{"),
        ("application/json", b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}'),
        ("application/json", b'{"instances": [[5.1, 3.5, 1.4, -0.2]]}'),
        ("application/json", b'{"instances": [[5.1, 3.5, 1.4]]}'),
        ("application/json", b'{"instances": [[5.1, 3.5, 1.4, "0.2"]]}'),
        ("application/json", b'{"instances": [], "inputs": []}'),
        # An integer no float can hold (found by a property test).
        ("application/json", b'{"instances": [[1%s, 3.5, 1.4, 0.2]]}' % (b"0" * 400)),
        (
            "application/json",
            b'{"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", '
            b'"petal_width"], "data": [[1%s, 3.5, 1.4, 0.2]]}}' % (b"0" * 400),
        ),
        # A key that is not UTF-8: msgspec lets UnicodeDecodeError through for one.
        ("application/json", b'{"dataframe_records": [{"\xff": 1}]}'),
        (
            "application/json",
            b'{"dataframe_records": [{"sepal_length": 5.1, "sepal_width": 3.5, '
            b'"petal_length": 1.4, "petal_width": 0.2}], "dataframe_split": null}',
        ),
        ("text/csv", b"sepal_length,sepal_width\n1,2\n"),
        ("text/csv", b"sepal_length,sepal_width,petal_length,petal_width\n1,2,x,4\n"),
        ("text/csv", b"\xff\xfe"),
        # A line break inside a field the csv module cannot place (found by schemathesis).
        ("text/csv", b"sepal_length,sepal_width,petal_length,petal_width\n1,2,3\r4\n"),
    ],
)
def test_bad_invocations_are_400_in_mlflows_error_shape(
    predictor_service: PredictorService, content_type: str, body: bytes
) -> None:
    response = httpx.post(
        f"{predictor_service.url}/invocations",
        content=body,
        headers={"Content-Type": content_type},
    )

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error_code"] == "BAD_REQUEST"
    assert error["message"]


def test_invocations_refuse_other_content_types_as_mlflow_does(
    predictor_service: PredictorService,
) -> None:
    response = httpx.post(
        f"{predictor_service.url}/invocations",
        content=b"a=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415
    assert "content types" in response.text


def test_an_invocation_is_logged_and_kept_for_feedback(
    predictor_service: PredictorService, redis_url: str
) -> None:
    response = httpx.post(
        f"{predictor_service.url}/invocations",
        json={"instances": [SETOSA]},
        headers={"X-Request-ID": "trace-me-1"},
    )
    request_id = response.headers["Iris-Request-ID"]

    stored = kept(redis_url, request_id)
    line = log_line(predictor_service, request_id)

    assert request_id != "trace-me-1"
    assert stored.all_predicted_species() == ["Iris-setosa"]
    assert (line["protocol"], line["trace_id"]) == ("mlflow", "trace-me-1")


def test_requests_are_counted_by_protocol(predictor_service: PredictorService) -> None:
    httpx.post(f"{predictor_service.url}/invocations", json={"instances": [SETOSA]})
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{predictor_service.url}/metrics").text
        if 'iris_prediction_requests_total{protocol="mlflow"}' in text:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)
