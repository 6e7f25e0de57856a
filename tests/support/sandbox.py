"""A predictor and a gateway that hostile and fuzzed input may change at will.

Both run as real processes, as everywhere in the suite, with everything they could change
kept apart from the session's services: a Redis of their own (no worker reads its jobs), and
a registered model of their own, which the predictor serves and the gateway promotes by
default. The predictor has a webhook secret, so that `POST /webhooks/mlflow` exists.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from iris_devstack.redis import start_redis
from tests.support.core import JOBS_NAMESPACE, register_copies
from tests.support.gateway import start_gateway
from tests.support.predictor import start_predictor, wait_ready

SANDBOX_MODEL = "Iris-Sandbox"


@dataclass(frozen=True)
class Sandbox:
    predictor_url: str
    gateway_url: str
    webhook_secret: str
    model_name: str


@contextmanager
def sandbox(logs_dir: Path, tracking_uri: str, api_token: str, label: str) -> Iterator[Sandbox]:
    """Start the sandbox's Redis, predictor and gateway on `tracking_uri` (a registry with
    the session's trained models); stop them on exit. `label` names their logs."""
    from mlflow import MlflowClient

    [version] = register_copies(tracking_uri, SANDBOX_MODEL, 1)
    MlflowClient(tracking_uri).set_registered_model_alias(SANDBOX_MODEL, "production", version)
    webhook_secret = secrets.token_urlsafe(24)
    redis_process, redis_url = start_redis(logs_dir)
    predictor, predictor_url = start_predictor(
        logs_dir,
        tracking_uri,
        wait=False,
        PREDICTOR_MODEL_NAME=SANDBOX_MODEL,
        PREDICTOR_WEBHOOK_SECRET=webhook_secret,
        REDIS_URL=redis_url,
        # The gateway's namespace, so that feedback finds the answers kept here.
        JOBS_NAMESPACE=JOBS_NAMESPACE,
    )
    gateway = None
    try:
        gateway, gateway_url = start_gateway(
            logs_dir,
            predictor_url,
            redis_url,
            tracking_uri,
            api_token,
            name=f"gateway-{label}",
            GATEWAY_DEFAULT_MODEL_NAME=SANDBOX_MODEL,
        )
        wait_ready(predictor, predictor_url)
        yield Sandbox(predictor_url, gateway_url, webhook_secret, SANDBOX_MODEL)
    finally:
        if gateway is not None:
            gateway.stop()
        predictor.stop()
        redis_process.stop()
