"""Bearer-token check for the routes that change state (POST /retrain, POST /promote)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# auto_error=False: a missing header must give our 401 envelope, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="The gateway's API_TOKEN.")


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = request.app.state.settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    # compare_digest: the time taken does not tell how much of the token was right.
    if credentials is None or not secrets.compare_digest(given, expected):
        raise HTTPException(
            status_code=401,
            detail="A valid 'Authorization: Bearer <token>' header is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )


TokenRequired = Depends(require_token)
