"""Bearer-token check for every route that changes state or reveals jobs."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from iris_gateway.state import StateDep
from iris_shared.http import ServiceError

# auto_error=False: a missing header must give our 401 envelope, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="The gateway's API_TOKEN.")


class Unauthorized(ServiceError):
    """The bearer token is missing or wrong."""

    status_code = 401
    error = "unauthorized"

    def __init__(self) -> None:
        super().__init__(
            "A valid 'Authorization: Bearer <token>' header is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )


# async: FastAPI runs a plain `def` dependency in its threadpool, a hop per request.
async def require_token(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = state.settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    # compare_digest: the time taken does not tell how much of the token was right.
    if credentials is None or not secrets.compare_digest(given, expected):
        raise Unauthorized()


TokenRequired = Depends(require_token)
