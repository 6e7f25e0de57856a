"""Move the `production` alias through MLflow's REST API (no MLflow client in the gateway).

Same steps as the trainer's `registry.promote`: check the version exists, remember what
`production` pointed at, move it, and drop `challenger` when it named the promoted version.
"""

from __future__ import annotations

from typing import Any

import httpx

from iris_gateway.upstream import UpstreamUnavailable, send

PRODUCTION = "production"
CHALLENGER = "challenger"
API = "/api/2.0/mlflow"


class UnknownModelVersion(Exception):
    """The registered model, or this version of it, does not exist."""


class RegistryError(Exception):
    """MLflow answered with an error the gateway cannot do anything about."""

    def __init__(self, status_code: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message


class ModelRegistry:
    upstream = "mlflow"

    def __init__(
        self, client: httpx.AsyncClient, tracking_uri: str, timeout: httpx.Timeout
    ) -> None:
        self.client = client
        self.base_url = f"{tracking_uri}{API}"
        self.timeout = timeout

    async def _call(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> tuple[int, dict[str, Any]]:
        response = await send(
            self.client,
            self.upstream,
            method,
            f"{self.base_url}{path}",
            timeout=self.timeout,
            params=params,
            json=json,
        )
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 500:
            raise UpstreamUnavailable(
                self.upstream, "status_5xx", f"MLflow answered {response.status_code}."
            )
        return response.status_code, body if isinstance(body, dict) else {}

    @staticmethod
    def _error(status: int, body: dict[str, Any]) -> RegistryError:
        return RegistryError(
            status, str(body.get("error_code", "UNKNOWN")), str(body.get("message", ""))
        )

    async def alias_version(self, name: str, alias: str) -> str | None:
        status, body = await self._call(
            "GET", "/registered-models/alias", params={"name": name, "alias": alias}
        )
        if status == 200:
            return str(body["model_version"]["version"])
        # A missing alias is 400 INVALID_PARAMETER_VALUE (not 404); a missing model, 404.
        if body.get("error_code") in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise self._error(status, body)

    async def promote(self, name: str, version: str) -> str | None:
        """Point `production` at `version`; return the version it pointed at before."""
        status, body = await self._call(
            "GET", "/model-versions/get", params={"name": name, "version": version}
        )
        if status != 200:
            if body.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
                raise UnknownModelVersion(f"{name} has no version {version}.")
            raise self._error(status, body)
        previous = await self.alias_version(name, PRODUCTION)
        status, body = await self._call(
            "POST",
            "/registered-models/alias",
            json={"name": name, "alias": PRODUCTION, "version": version},
        )
        if status != 200:
            raise self._error(status, body)
        if await self.alias_version(name, CHALLENGER) == version:
            # The challenger won; leaving the alias would advertise a contest that is over.
            status, body = await self._call(
                "DELETE", "/registered-models/alias", json={"name": name, "alias": CHALLENGER}
            )
            if status != 200:
                raise self._error(status, body)
        return previous
