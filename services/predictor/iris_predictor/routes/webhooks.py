"""POST /webhooks/mlflow: an alias moved, check it now instead of at the next poll."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from iris_predictor.state import StateDep
from iris_predictor.webhooks import InvalidSignatureError, MalformedTimestampError, verify
from iris_shared.http import DocstringRoute, error_response, error_responses, loads_json

logger = logging.getLogger(__name__)

router = APIRouter(tags=["webhooks"], route_class=DocstringRoute)

# A tuple, not a set: a delivery's fields may be lists or objects, which cannot be hashed.
ALIAS_EVENTS = (("model_version_alias", "created"),)
# Read by the route itself (the signature covers the raw bytes), documented here.
_DELIVERY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "An MLflow webhook event, signed in X-MLflow-Signature.",
                }
            }
        },
    }
}


@router.post(
    "/webhooks/mlflow", responses=error_responses(400, 401, 413, 415), openapi_extra=_DELIVERY
)
async def mlflow_webhook(request: Request, state: StateDep) -> JSONResponse:
    """Receive an MLflow webhook delivery and check the alias at once when it concerns ours."""
    secret = state.settings.webhook_secret
    # The router is included only when a secret is set.
    assert secret is not None
    body = await request.body()
    try:
        verify(
            secret=secret.get_secret_value(),
            delivery_id=request.headers.get("X-MLflow-Delivery-Id"),
            timestamp=request.headers.get("X-MLflow-Timestamp"),
            signature=request.headers.get("X-MLflow-Signature"),
            body=body,
            now=time.time(),
            max_age_s=state.settings.webhook_max_age_s,
        )
    except MalformedTimestampError as exc:
        return error_response(400, "invalid_timestamp", str(exc))
    except InvalidSignatureError as exc:
        logger.warning("Rejected a webhook delivery", extra={"reason": str(exc)})
        return error_response(401, "invalid_signature", str(exc))
    try:
        payload = loads_json(body)
    except ValueError:
        payload = None
    data = (payload.get("data") or {}) if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        return error_response(400, "malformed_json", "The delivery is not an MLflow event.")
    event = (payload.get("entity"), payload.get("action"))
    name, alias = data.get("name"), data.get("alias")
    holder = state.holder
    if event not in ALIAS_EVENTS or (name, alias) != (holder.name, holder.alias):
        return JSONResponse({"status": "ignored"})
    if state.watcher is not None:
        state.watcher.check_soon()
    logger.info("Alias moved; checking now", extra={"model": name, "version": data.get("version")})
    return JSONResponse({"status": "accepted"})
