"""The gateway in front of `mlflow models serve` itself: MLflow's scoring protocol passes through
unchanged, with MLflow's own client.

The gateway's V2 and `/invocations` routes pass the predictor's answers through as they are;
here the server behind it is MLflow's reference implementation of that protocol, on the
session registry's production model, so every answer through the gateway can be compared with
the same server's answer given directly. (tests/test_protocol_clients_gateway.py drives the
real predictor through the gateway.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from iris_devstack.processes import ManagedProcess, free_port, http_ok, wait_until
from iris_shared.schemas import FEATURE_NAMES
from tests.support.gateway import start_gateway
from tests.support.protocol_clients import scoring_client

pytestmark = pytest.mark.integration

MODEL = "Iris-LogisticRegression"
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.8, 4.4, 1.4], [7.7, 3.0, 6.1, 2.3]]
CSV = ",".join(FEATURE_NAMES) + "\n" + "\n".join(",".join(map(str, row)) for row in ROWS) + "\n"


@pytest.fixture(scope="module")
def mlflow_serve(logs_dir: Path, trained_registry: str) -> Iterator[str]:
    """`mlflow models serve` on the production model, one worker."""
    port = free_port()
    process = ManagedProcess(
        "mlflow-models-serve",
        [
            str(Path(sys.executable).with_name("mlflow")),
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@production",
            "-w",
            "1",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        logs_dir,
        env={"MLFLOW_TRACKING_URI": trained_registry},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(http_ok(f"{url}/ping"), 120, "mlflow models serve", process)
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def gateway_to_mlflow(
    logs_dir: Path, mlflow_serve: str, redis_url: str, trained_registry: str, api_token: str
) -> Iterator[str]:
    """A gateway whose predictor is `mlflow models serve`, with a small body limit."""
    process, url = start_gateway(
        logs_dir,
        mlflow_serve,
        redis_url,
        trained_registry,
        api_token,
        name="gateway-to-mlflow-serve",
        GATEWAY_MAX_BODY_BYTES="100000",
    )
    yield url
    process.stop()


def test_mlflows_client_gets_the_same_answers_through_the_gateway(
    gateway_to_mlflow: str, mlflow_serve: str
) -> None:
    through_gateway = scoring_client(gateway_to_mlflow)
    direct = scoring_client(mlflow_serve)
    # Columns by name in another order than the model's: MLflow's schema reorders them.
    frame = pd.DataFrame(ROWS, columns=list(FEATURE_NAMES))[list(reversed(FEATURE_NAMES))]

    through_gateway.wait_server_ready(timeout=10)
    through_gateway.ping()

    assert through_gateway.get_version() == direct.get_version()
    assert through_gateway.invoke(frame) == direct.invoke(frame)
    assert len(through_gateway.invoke(frame)["predictions"]) == len(ROWS)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/csv", CSV),
        ("application/json", '{"instances": ' + str(ROWS) + "}"),
        ("application/json", '{"inputs": ' + str(ROWS) + "}"),
        # MLflow's own refusals: a frame without the model's columns, another content type.
        ("application/json", '{"dataframe_split": {"columns": ["a"], "data": [[1]]}}'),
        ("application/json", "{not json"),
        ("text/plain", "5.1,3.5,1.4,0.2"),
    ],
)
def test_every_invocation_answer_passes_through_unchanged(
    gateway_to_mlflow: str, mlflow_serve: str, content_type: str, body: str
) -> None:
    headers = {"Content-Type": content_type}
    through_gateway = httpx.post(f"{gateway_to_mlflow}/invocations", content=body, headers=headers)
    direct = httpx.post(f"{mlflow_serve}/invocations", content=body, headers=headers)

    assert through_gateway.status_code == direct.status_code
    assert through_gateway.content == direct.content
    assert through_gateway.headers["content-type"] == direct.headers["content-type"]


def test_the_gateways_body_limit_holds_in_front_of_mlflow(gateway_to_mlflow: str) -> None:
    rows = "\n".join(["5.1,3.5,1.4,0.2"] * 10_000)

    refused = httpx.post(
        f"{gateway_to_mlflow}/invocations",
        content=",".join(FEATURE_NAMES) + "\n" + rows,
        headers={"Content-Type": "text/csv"},
    )

    assert refused.status_code == 413
    assert refused.json()["error"] == "payload_too_large"


def test_mlflows_health_passes_through_and_the_gateways_own_stays(
    gateway_to_mlflow: str, mlflow_serve: str
) -> None:
    health = httpx.get(f"{gateway_to_mlflow}/health")
    healthz = httpx.get(f"{gateway_to_mlflow}/healthz")

    assert health.status_code == 200
    assert health.content == httpx.get(f"{mlflow_serve}/health").content
    assert healthz.json() == {"status": "ok"}
