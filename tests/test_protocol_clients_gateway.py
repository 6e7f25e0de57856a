"""Real clients of other model servers, pointed at the gateway and nothing else changed.

tritonclient (the Open Inference Protocol V2, in JSON and with binary tensors) and MLflow's
`ScoringServerClient` (`mlflow models serve`'s protocol) talk to the session gateway, in front
of the real predictor, Redis and MLflow. Their answers take feedback through the gateway's
POST /feedback like any other, and the gateway's limits hold on their paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from iris_devstack.processes import wait_until
from iris_shared.schemas import FEATURE_NAMES, SPECIES
from tests.support.gateway import start_gateway
from tests.support.protocol_clients import TritonClient, scoring_client

pytestmark = pytest.mark.integration

MODEL = "Iris-LogisticRegression"
# One flower of each species, in FEATURE_NAMES order.
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.8, 4.4, 1.4], [7.7, 3.0, 6.1, 2.3]]
EXPECTED = list(SPECIES)
RECORDS = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in ROWS]
SERVER_ID = re.compile(r"[0-9a-f]{32}")


def infer(**call: Any) -> dict[str, Any]:
    return {"call": "infer", "model": MODEL, "rows": ROWS, **call}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def give_feedback(gateway_url: str, token: str, request_id: str, row: int) -> httpx.Response:
    """The label of one answered row, once the predictor has kept the answer (a moment after
    answering)."""
    label = {"request_id": request_id, "row": row, "actual_species": EXPECTED[row]}
    answers: list[httpx.Response] = []

    def accepted() -> bool:
        answers.append(httpx.post(f"{gateway_url}/feedback", json=label, headers=bearer(token)))
        return answers[-1].status_code != 404

    wait_until(accepted, 10, "the answer kept for feedback")
    return answers[-1]


@pytest.mark.parametrize(
    ("datatype", "binary_input", "binary_output"),
    [("FP32", False, False), ("FP64", False, False), ("FP32", True, True), ("FP64", True, False)],
)
def test_tritonclient_predicts_through_the_gateway(
    gateway_url: str,
    triton_client: TritonClient,
    datatype: str,
    binary_input: bool,
    binary_output: bool,
) -> None:
    outputs = [
        {"name": "predict", "binary": binary_output},
        {"name": "predict_proba", "binary": binary_output},
    ]
    [answer] = triton_client.run(
        gateway_url,
        [
            infer(
                datatype=datatype,
                binary_input=binary_input,
                outputs=outputs,
                request_id="client-42",
            )
        ],
    )

    result = answer["result"]
    assert result["outputs"]["predict"] == EXPECTED
    probabilities = result["outputs"]["predict_proba"]
    assert len(probabilities) == len(ROWS)
    assert all(len(row) == len(SPECIES) and abs(sum(row) - 1) < 1e-6 for row in probabilities)
    assert [max(range(3), key=row.__getitem__) for row in probabilities] == [0, 1, 2]
    assert sorted(result["binary_outputs"]) == (
        ["predict", "predict_proba"] if binary_output else []
    )
    response = result["response"]
    assert response["id"] == "client-42"
    assert response["model_name"] == MODEL
    assert SERVER_ID.fullmatch(response["parameters"]["request_id"])


def test_tritonclient_gets_only_the_outputs_it_asks_for(
    gateway_url: str, triton_client: TritonClient
) -> None:
    [answer] = triton_client.run(
        gateway_url, [infer(outputs=[{"name": "predict_proba", "binary": True}])]
    )

    assert list(answer["result"]["outputs"]) == ["predict_proba"]


def test_tritonclient_health_and_metadata_through_the_gateway(
    gateway_url: str, triton_client: TritonClient
) -> None:
    version = httpx.get(f"{gateway_url}/model").json()["version"]

    live, ready, model_ready, server, model, by_version, version_ready, unknown = triton_client.run(
        gateway_url,
        [
            {"call": "is_server_live"},
            {"call": "is_server_ready"},
            {"call": "is_model_ready", "model": MODEL},
            {"call": "get_server_metadata"},
            {"call": "get_model_metadata", "model": MODEL},
            {"call": "get_model_metadata", "model": MODEL, "version": version},
            {"call": "is_model_ready", "model": MODEL, "version": version},
            {"call": "get_model_metadata", "model": "No-Such-Model"},
        ],
    )

    assert live["result"] is ready["result"] is model_ready["result"] is True
    assert version_ready["result"] is True
    assert "name" in server["result"]
    assert model["result"]["name"] == MODEL
    assert model["result"]["inputs"][0]["shape"][-1] == len(FEATURE_NAMES)
    assert {output["name"] for output in model["result"]["outputs"]} == {
        "predict",
        "predict_proba",
    }
    assert by_version["result"]["name"] == MODEL
    assert unknown["error"]["status"] == "404"


def test_a_version_that_is_not_served_is_404_naming_the_served_ones(
    gateway_url: str, triton_client: TritonClient
) -> None:
    served = httpx.get(f"{gateway_url}/model").json()["version"]

    [answer] = triton_client.run(gateway_url, [infer(version="9999")])

    assert answer["error"]["status"] == "404"
    assert served in answer["error"]["message"]


def test_a_v2_answer_takes_feedback_through_the_gateway(
    gateway_url: str, triton_client: TritonClient, api_token: str
) -> None:
    [answer] = triton_client.run(gateway_url, [infer(binary_input=True)])
    request_id = answer["result"]["response"]["parameters"]["request_id"]

    without_token = httpx.post(
        f"{gateway_url}/feedback",
        json={"request_id": request_id, "row": 2, "actual_species": EXPECTED[2]},
    )
    label = give_feedback(gateway_url, api_token, request_id, row=2)

    assert without_token.status_code == 401
    assert without_token.json()["error"] == "unauthorized"
    assert label.status_code == 202
    assert label.json()["outcome"] == "accepted"


def test_mlflows_client_predicts_through_the_gateway(gateway_url: str) -> None:
    client = scoring_client(gateway_url)
    # Columns by name, in any order: MLflow's client sends them as it holds them.
    frame = pd.DataFrame(ROWS, columns=list(FEATURE_NAMES))[list(reversed(FEATURE_NAMES))]

    client.wait_server_ready(timeout=10)
    predictions = client.invoke(frame)

    assert predictions["predictions"] == EXPECTED
    assert client.get_version()


def _csv(names: list[str], line_end: str = "\n") -> str:
    order = [FEATURE_NAMES.index(name) for name in names]
    lines = [",".join(names)] + [",".join(str(row[i]) for i in order) for row in ROWS]
    return line_end.join(lines) + line_end


# Columns out of order are kept too: picked by name, they arrive as a strided view.
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", {"instances": ROWS}),
        ("application/json", {"inputs": ROWS}),
        (
            "application/json",
            {"dataframe_records": [dict(zip(FEATURE_NAMES, r, strict=True)) for r in ROWS]},
        ),
        (
            "application/json",
            {
                "dataframe_split": {
                    "columns": list(reversed(FEATURE_NAMES)),
                    "data": [list(reversed(row)) for row in ROWS],
                }
            },
        ),
        ("text/csv", _csv(list(FEATURE_NAMES))),
        ("text/csv", _csv(list(reversed(FEATURE_NAMES)), line_end="\r")),
    ],
)
def test_invocations_answers_take_feedback_through_the_gateway(
    gateway_url: str, api_token: str, content_type: str, body: Any
) -> None:
    send: Callable[..., httpx.Response] = httpx.post
    if isinstance(body, str):
        answer = send(
            f"{gateway_url}/invocations", content=body, headers={"Content-Type": content_type}
        )
    else:
        answer = send(f"{gateway_url}/invocations", json=body)

    assert answer.status_code == 200
    assert answer.json() == {"predictions": EXPECTED}
    request_id = answer.headers["Iris-Request-ID"]
    assert SERVER_ID.fullmatch(request_id)
    assert give_feedback(gateway_url, api_token, request_id, row=1).status_code == 202


def test_mlflows_error_shape_and_415_pass_through_the_gateway(
    gateway_url: str, predictor_url: str
) -> None:
    bad = {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": [[5.1, 3.5, 1.4]]}}
    through_gateway = httpx.post(f"{gateway_url}/invocations", json=bad)
    direct = httpx.post(f"{predictor_url}/invocations", json=bad)
    wrong_type = httpx.post(
        f"{gateway_url}/invocations", content=b"5.1", headers={"Content-Type": "text/plain"}
    )

    assert through_gateway.status_code == direct.status_code == 400
    assert through_gateway.json() == direct.json()
    assert through_gateway.json()["error_code"] == "BAD_REQUEST"
    assert wrong_type.status_code == 415


def test_bodies_over_the_gateways_limit_are_refused_before_the_predictor(
    logs_dir: Path,
    predictor_url: str,
    redis_url: str,
    trained_registry: str,
    api_token: str,
    triton_client: TritonClient,
) -> None:
    # A small limit; the large CSV is still being sent when the 413 is answered, and the rest
    # of it must not be taken for the next request's head (431).
    process, gateway = start_gateway(
        logs_dir,
        predictor_url,
        redis_url,
        trained_registry,
        api_token,
        name="gateway-small-bodies",
        GATEWAY_MAX_BODY_BYTES="20000",
    )
    try:
        # 1,000 rows of FP64 in binary: 32 kB.
        [binary] = triton_client.run(
            gateway, [infer(rows=[ROWS[0]] * 1000, datatype="FP64", binary_input=True)]
        )
        csv = httpx.post(
            f"{gateway}/invocations",
            content=",".join(FEATURE_NAMES) + "\n" + "5.1,3.5,1.4,0.2\n" * 2_000,
            headers={"Content-Type": "text/csv"},
        )
        large_csv = httpx.post(
            f"{gateway}/invocations",
            content=",".join(FEATURE_NAMES) + "\n" + "5.1,3.5,1.4,0.2\n" * 200_000,
            headers={"Content-Type": "text/csv"},
        )
    finally:
        process.stop()

    assert binary["error"]["status"] == "413"
    for answer in (csv, large_csv):
        assert answer.status_code == 413
        assert answer.json()["error"] == "payload_too_large"


def test_the_gateway_counts_predictions_by_protocol(
    gateway_url: str, triton_client: TritonClient
) -> None:
    triton_client.run(gateway_url, [infer()])
    scoring_client(gateway_url).invoke(pd.DataFrame(ROWS, columns=list(FEATURE_NAMES)))

    text = httpx.get(f"{gateway_url}/metrics").text

    for protocol in ("v2", "mlflow"):
        assert (
            f'iris_gateway_prediction_requests_total{{protocol="{protocol}",status="2xx"}}' in text
        )
