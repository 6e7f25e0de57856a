"""Verify MLflow webhook deliveries: `X-MLflow-Signature: v1,<base64 HMAC-SHA256>`.

The signed content is "{X-MLflow-Delivery-Id}.{X-MLflow-Timestamp}.{raw body}"; the timestamp
must be recent so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_VERSION = "v1"


class InvalidSignatureError(Exception):
    """The delivery is unsigned, signed with another secret, altered or too old."""


class MalformedTimestampError(ValueError):
    """X-MLflow-Timestamp is not a number of seconds a delivery could carry."""


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    *,
    secret: str,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    max_age_s: float,
) -> None:
    """Return quietly for a genuine, fresh delivery.

    Raises MalformedTimestampError (a client mistake: 400) or InvalidSignatureError (401).
    """
    if not delivery_id or not timestamp or not signature:
        raise InvalidSignatureError("Missing X-MLflow-Delivery-Id, -Timestamp or -Signature.")
    # Ten digits reach the year 2286; a longer "timestamp" is refused before int() sees it.
    if not timestamp.isdigit() or len(timestamp) > 10:
        raise MalformedTimestampError("X-MLflow-Timestamp must be Unix seconds (digits only).")
    if abs(now - int(timestamp)) > max_age_s:
        raise InvalidSignatureError("The delivery timestamp is too old (or in the future).")
    expected = sign(secret, delivery_id, timestamp, body)
    # Constant time: the comparison must not reveal how many leading characters matched.
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise InvalidSignatureError("The signature does not match.")
