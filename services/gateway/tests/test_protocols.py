"""The Open Inference Protocol V2 and MLflow's scoring protocol through the gateway, in front of
a stub predictor that answers what it was sent: what passes through, both ways, and what the
gateway refuses itself (tests/test_protocol_clients_gateway.py drives the real predictor with
real clients)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from iris_devstack.processes import free_port
from tests.support.exposition import metric_value

NAMESPACE = f"unit-protocols-{uuid.uuid4().hex[:8]}"
MODEL = "Iris-LogisticRegression"
V2_JSON = {
    "id": "client-1",
    "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}
    ],
}


@pytest.fixture(scope="module")
def gateway(
    start_gateway_app: Callable[..., str],
    stub_predictor: tuple[str, dict[str, Any]],
    unit_redis: str,
) -> str:
    return start_gateway_app(
        predictor_url=stub_predictor[0], REDIS_URL=unit_redis, JOBS_NAMESPACE=NAMESPACE
    )


def last_seen(stub_predictor: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = stub_predictor[1]["protocol_requests"][-1]
    return seen


@pytest.mark.parametrize(
    "path",
    [
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        f"/v2/models/{MODEL}",
        f"/v2/models/{MODEL}/versions/3",
        f"/v2/models/{MODEL}/ready",
        f"/v2/models/{MODEL}/versions/3/ready",
        "/ping",
        "/health",
        "/version",
    ],
)
def test_every_read_of_both_protocols_reaches_the_predictor_on_its_path(
    gateway: str, path: str
) -> None:
    response = httpx.get(f"{gateway}{path}")

    assert response.status_code == 200
    assert response.json()["method"] == "GET"
    assert response.json()["raw_path"] == path


@pytest.mark.parametrize(
    "path", [f"/v2/models/{MODEL}/infer", f"/v2/models/{MODEL}/versions/3/infer"]
)
def test_v2_json_inference_passes_through_with_the_request_id(gateway: str, path: str) -> None:
    body = json.dumps(V2_JSON).encode()
    response = httpx.post(
        f"{gateway}{path}",
        content=body,
        headers={"X-Request-ID": "trace-7", "Content-Type": "application/json"},
    )

    assert response.status_code == 200
    seen = response.json()
    assert seen["raw_path"] == path
    assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"]["x-request-id"] == "trace-7"
    assert seen["body_bytes"] == len(body)
    assert response.headers["X-Request-ID"] == "trace-7"


def test_binary_tensors_pass_through_unchanged_both_ways(
    gateway: str, stub_predictor: tuple[str, dict[str, Any]]
) -> None:
    header = json.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32"}]}
    ).encode()
    body = b"binary:" + header + bytes(range(16)) + b"\x00\xff" * 8
    # As tritonclient sends it: no Content-Type at all.
    response = httpx.post(
        f"{gateway}/v2/models/{MODEL}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(len(header) + 7)},
    )

    assert response.status_code == 200
    seen_by_predictor = last_seen(stub_predictor)
    assert seen_by_predictor["body"] == body
    assert seen_by_predictor["headers"]["inference-header-content-length"] == str(len(header) + 7)
    assert "content-type" not in seen_by_predictor["headers"]
    json_length = int(response.headers["Inference-Header-Content-Length"])
    assert response.content[json_length:] == body
    assert json.loads(response.content[:json_length])["body_bytes"] == len(body)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["Iris-Request-ID"] == "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}'),
        ("text/csv", b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n"),
        ("text/csv; charset=utf-8", b"sepal_length,sepal_width,petal_length,petal_width\n"),
    ],
)
def test_invocations_take_json_and_csv(gateway: str, content_type: str, body: bytes) -> None:
    response = httpx.post(
        f"{gateway}/invocations", content=body, headers={"Content-Type": content_type}
    )

    assert response.status_code == 200
    assert response.json()["headers"]["content-type"] == content_type
    assert response.json()["body_bytes"] == len(body)


def test_the_predictors_own_refusal_passes_through_in_its_own_shape(gateway: str) -> None:
    response = httpx.post(
        f"{gateway}/invocations", content=b"hello", headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415
    assert response.text == "Unsupported content type"
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/%2E%2E/infer",
        "/v2/models/../infer",
        "/v2/models/..%2Fwebhooks%2Fmlflow/infer",
        "/v2/models/a%2F..%2F..%2Fwebhooks/infer",
    ],
)
def test_a_model_name_never_reaches_another_predictor_path(
    gateway: str, stub_predictor: tuple[str, dict[str, Any]], path: str
) -> None:
    before = len(stub_predictor[1]["protocol_requests"])
    # httpx would resolve the dots itself: send the path as it is written.
    with httpx.Client() as client:
        request = client.build_request("POST", f"{gateway}/", json=V2_JSON)
        request.url = request.url.copy_with(raw_path=path.encode())
        response = client.send(request)

    reached = stub_predictor[1]["protocol_requests"][before:]
    assert all(seen["raw_path"] not in ("/v2/infer", "/webhooks/mlflow") for seen in reached)
    if response.status_code == 200:
        # Routed as a model name: the predictor got that name, encoded, on the infer path.
        assert reached[-1]["raw_path"].startswith("/v2/models/")
        assert reached[-1]["raw_path"].endswith("/infer")
    else:
        assert response.status_code == 404


def test_bodies_over_the_limit_are_refused_on_every_protocol(
    start_gateway_app: Callable[..., str], stub_predictor: tuple[str, dict[str, Any]]
) -> None:
    gateway = start_gateway_app(predictor_url=stub_predictor[0], max_body_bytes=100)
    before = len(stub_predictor[1]["protocol_requests"])

    answers = [
        httpx.post(f"{gateway}/v2/models/{MODEL}/infer", content=b"binary:" + b"\x00" * 200),
        httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json={"inputs": [V2_JSON] * 5}),
        httpx.post(
            f"{gateway}/invocations",
            content=b"a,b,c,d\n" + b"1,2,3,4\n" * 30,
            headers={"Content-Type": "text/csv"},
        ),
    ]

    for response in answers:
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"
    assert len(stub_predictor[1]["protocol_requests"]) == before


def test_with_no_predictor_every_protocol_gets_the_gateways_own_error(
    start_gateway_app: Callable[..., str], unit_redis: str
) -> None:
    # Nothing listens there: the refusal a stopped predictor gives.
    gateway = start_gateway_app(
        predictor_url=f"http://127.0.0.1:{free_port()}", REDIS_URL=unit_redis
    )

    infer = httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json=V2_JSON)
    invocations = httpx.post(f"{gateway}/invocations", json={"instances": [[1, 2, 3, 4]]})
    ping = httpx.get(f"{gateway}/ping")

    for response in (infer, invocations, ping):
        assert response.status_code in (502, 504)
        # A string under "error", as V2 clients read it, in the gateway's envelope.
        assert response.json()["error"] in ("upstream_unavailable", "upstream_timeout")
        assert "predictor" in response.json()["message"]


def test_prediction_requests_are_counted_by_protocol(gateway: str) -> None:
    def count(protocol: str) -> float:
        text = httpx.get(f"{gateway}/metrics").text
        return metric_value(
            text, "iris_gateway_prediction_requests_total", protocol=protocol, status="2xx"
        )

    before = {protocol: count(protocol) for protocol in ("native", "v2", "mlflow")}
    httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json=V2_JSON)
    httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json=V2_JSON)
    httpx.post(f"{gateway}/invocations", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
    httpx.post(
        f"{gateway}/predict",
        json={"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    )
    httpx.get(f"{gateway}/v2/health/ready")  # no prediction: not counted

    text = httpx.get(f"{gateway}/metrics").text
    assert count("v2") == before["v2"] + 2
    assert count("mlflow") == before["mlflow"] + 1
    assert count("native") == before["native"] + 1
    assert (
        'http_requests_total{handler="/v2/models/{name}/infer",method="POST",status="2xx"}' in text
    )


def test_wrong_methods_are_405_and_the_gateways_health_stays_its_own(gateway: str) -> None:
    wrong = httpx.get(f"{gateway}/invocations")
    healthz = httpx.get(f"{gateway}/healthz")

    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert healthz.json() == {"status": "ok"}


def test_openapi_lists_both_protocols(gateway: str) -> None:
    paths = httpx.get(f"{gateway}/openapi.json").json()["paths"]

    assert "post" in paths["/v2/models/{name}/infer"]
    assert "post" in paths["/v2/models/{name}/versions/{version}/infer"]
    assert "text/csv" in paths["/invocations"]["post"]["requestBody"]["content"]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/ping", "/health", "/version"} <= set(
        paths
    )


@pytest.mark.parametrize(
    ("path", "head"),
    [
        (f"/v2/models/{MODEL}/infer", b"Inference-Header-Content-Length: 10\r\n"),
        ("/invocations", b"Content-Type: text/csv\r\n"),
    ],
)
def test_a_body_that_trickles_in_gets_408_on_every_protocol(
    start_gateway_app: Callable[..., str],
    stub_predictor: tuple[str, dict[str, Any]],
    path: str,
    head: bytes,
) -> None:
    gateway = start_gateway_app(predictor_url=stub_predictor[0], BODY_READ_TIMEOUT_S=0.5)
    host, port = gateway.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n".encode()
            + head
            + b"\r\nbinary:"
        )
        answer = connection.makefile("rb").read()

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"408"
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"


SETOSA_FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_beyond_the_cap_on_requests_in_flight_every_protocol_gets_503(
    start_gateway_app: Callable[..., str], slow_predictor: str
) -> None:
    # One request in flight at most; the slow predictor holds the first for 3 s.
    gateway = start_gateway_app(
        predictor_url=slow_predictor, max_concurrent_requests=1, predictor_timeout_s=10
    )

    with ThreadPoolExecutor(1) as pool:
        deadline = time.monotonic() + 10
        while True:
            holding = pool.submit(
                httpx.post,
                f"{gateway}/predict",
                json=SETOSA_FLOWER,
                timeout=10,
            )
            # Until the first request is in flight, these reach the (fast) health route; one
            # of them may take the only slot first, and the first request is refused: again.
            while not holding.done() and httpx.get(f"{gateway}/v2/health/ready").status_code != 503:
                assert time.monotonic() < deadline, "the first request never got in flight"
            if not holding.done():
                break
        refused = [
            httpx.post(f"{gateway}/v2/models/{MODEL}/infer", json=V2_JSON),
            httpx.post(f"{gateway}/invocations", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}),
            httpx.get(f"{gateway}/ping"),
        ]
        assert holding.result().status_code == 200

    for response in refused:
        assert response.status_code == 503
        assert response.json()["error"] == "overloaded"
        assert response.headers["Retry-After"] == "1"
