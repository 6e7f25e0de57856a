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
    """Return quietly for a genuine, fresh delivery; raise InvalidSignatureError otherwise."""
    if not delivery_id or not timestamp or not signature:
        raise InvalidSignatureError("Missing X-MLflow-Delivery-Id, -Timestamp or -Signature.")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > max_age_s:
        raise InvalidSignatureError("The delivery timestamp is missing, malformed or too old.")
    expected = sign(secret, delivery_id, timestamp, body)
    # Constant time: the comparison must not reveal how many leading characters matched.
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise InvalidSignatureError("The signature does not match.")
