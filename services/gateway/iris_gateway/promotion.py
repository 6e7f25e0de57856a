"""Promotion through MLflow's REST API (no MLflow client in the gateway): the one door to
production.

`promote` moves `production` only to a version that exists, is READY and meets the serving
contract (`iris_shared.servable`: skops format, the four measurements as its signature), read
from the version's own MLmodel file through the tracking server. Then, holding a Redis lock so
that concurrent promotions (from any gateway process or replica) happen one after the other,
it reads the previous version, moves the alias and drops `challenger` when it named the
promoted version.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as redis
import yaml

from iris_gateway.upstream import Upstream, UpstreamUnavailable
from iris_shared.http import ServiceError
from iris_shared.registry import (
    CHALLENGER,
    MLFLOW_API,
    MLFLOW_ARTIFACTS_API,
    NOT_FOUND_ERRORS,
    PRODUCTION,
    PROXIED_ARTIFACTS_SCHEME,
)
from iris_shared.servable import servability_problems

logger = logging.getLogger(__name__)

PROXIED_ARTIFACTS = f"{PROXIED_ARTIFACTS_SCHEME}:/"
# Long enough for the few MLflow calls of one promotion; a crashed holder frees it by then.
LOCK_TIMEOUT_S = 30
LOCK_WAIT_S = 10


class ModelVersionNotFound(ServiceError):
    """The registered model, or this version of it, does not exist."""

    status_code = 404
    error = "model_version_not_found"


class ModelVersionNotServable(ServiceError):
    """The version exists but is not READY or breaks the serving contract."""

    status_code = 422
    error = "model_version_not_servable"


class PromotionBusy(ServiceError):
    """Another promotion held the lock for longer than a client should wait."""

    status_code = 409
    error = "promotion_in_progress"
    retry_after_s = 2


class PromotionUnavailable(ServiceError):
    """Redis, which holds the promotion lock, cannot be reached."""

    status_code = 503
    error = "promotion_unavailable"
    retry_after_s = 5


class RegistryError(ServiceError):
    """MLflow answered with an error the gateway cannot do anything about."""

    status_code = 502
    error = "registry_error"

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.error_code = str(body.get("error_code", "UNKNOWN"))
        super().__init__(
            f"MLflow refused the request: {body.get('message', '')}",
            detail={"upstream": "mlflow", "error_code": self.error_code},
        )
        self.upstream_status = status


class Promoter:
    """Moves `production` to a version that may be served, one promotion at a time."""

    def __init__(self, mlflow: Upstream, locks: redis.Redis, lock_name: str) -> None:
        self.mlflow = mlflow
        self.locks = locks
        self.lock_name = lock_name

    async def _call(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> tuple[int, Any]:
        response = await self.mlflow.request(method, path, params=params, json_body=json)
        if response.status_code >= 500:
            raise self.mlflow.failed(
                UpstreamUnavailable, "status_5xx", f"MLflow answered {response.status_code}."
            )
        if path.startswith(MLFLOW_ARTIFACTS_API):
            return response.status_code, response.content
        body = response.json()
        return response.status_code, body if isinstance(body, dict) else {}

    async def alias_version(self, name: str, alias: str) -> str | None:
        status, body = await self._call(
            "GET", f"{MLFLOW_API}/registered-models/alias", params={"name": name, "alias": alias}
        )
        if status == 200:
            return str(body["model_version"]["version"])
        if body.get("error_code") in NOT_FOUND_ERRORS:
            return None
        raise RegistryError(status, body)

    async def promote(self, name: str, version: str) -> str | None:
        """Point `production` at `version`; return the version it pointed at before."""
        await self._check_servable(name, version)
        lock = self.locks.lock(self.lock_name, timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_WAIT_S)
        try:
            acquired = await lock.acquire()
        except redis.RedisError as exc:
            raise PromotionUnavailable(
                "Promotions are unavailable right now (Redis cannot be reached); retry later."
            ) from exc
        if not acquired:
            raise PromotionBusy("Another promotion is in progress; retry in a moment.")
        try:
            previous = await self.alias_version(name, PRODUCTION)
            await self._set_alias(name, PRODUCTION, version)
            if await self.alias_version(name, CHALLENGER) == version:
                # The challenger won; leaving the alias would advertise a contest that is over.
                status, body = await self._call(
                    "DELETE",
                    f"{MLFLOW_API}/registered-models/alias",
                    json={"name": name, "alias": CHALLENGER},
                )
                if status != 200:
                    raise RegistryError(status, body)
            return previous
        finally:
            try:
                await lock.release()
            except redis.RedisError:
                # It expires on its own after LOCK_TIMEOUT_S.
                logger.warning("Unable to release the promotion lock", exc_info=True)

    async def _set_alias(self, name: str, alias: str, version: str) -> None:
        status, body = await self._call(
            "POST",
            f"{MLFLOW_API}/registered-models/alias",
            json={"name": name, "alias": alias, "version": version},
        )
        if status != 200:
            raise RegistryError(status, body)

    async def _check_servable(self, name: str, version: str) -> None:
        status, body = await self._call(
            "GET", f"{MLFLOW_API}/model-versions/get", params={"name": name, "version": version}
        )
        if status != 200:
            # A name MLflow finds invalid names no model either.
            if body.get("error_code") in NOT_FOUND_ERRORS:
                raise ModelVersionNotFound(f"{name} has no version {version}.")
            raise RegistryError(status, body)
        model_version = body["model_version"]
        if model_version.get("status") != "READY":
            raise ModelVersionNotServable(
                f"{name} version {version} is {model_version.get('status')}, not READY."
            )
        mlmodel = await self._mlmodel(model_version)
        problems = (
            servability_problems(mlmodel)
            if mlmodel is not None
            else ["its MLmodel file cannot be read through the tracking server"]
        )
        if problems:
            raise ModelVersionNotServable(
                f"{name} version {version} cannot be served: {'; '.join(problems)}.",
                detail={"problems": problems},
            )

    async def _mlmodel(self, model_version: dict[str, Any]) -> dict[str, Any] | None:
        """The version's MLmodel, read through the tracking server's artefact proxy."""
        artifact_uri = str(model_version.get("source", ""))
        if artifact_uri.startswith("models:/"):
            # MLflow 3: the version points at a logged model, which knows where it lives.
            model_id = artifact_uri.removeprefix("models:/")
            status, body = await self._call("GET", f"{MLFLOW_API}/logged-models/{model_id}")
            if status != 200:
                return None
            artifact_uri = str(body.get("model", {}).get("info", {}).get("artifact_uri", ""))
        if not artifact_uri.startswith(PROXIED_ARTIFACTS):
            return None
        path = artifact_uri.removeprefix(PROXIED_ARTIFACTS).strip("/")
        status, content = await self._call("GET", f"{MLFLOW_ARTIFACTS_API}/{path}/MLmodel")
        if status != 200:
            return None
        try:
            mlmodel = yaml.safe_load(content)
        except yaml.YAMLError:
            return None
        return mlmodel if isinstance(mlmodel, dict) else None
