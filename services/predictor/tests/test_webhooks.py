from __future__ import annotations

import pytest

from iris_predictor.webhooks import InvalidSignatureError, MalformedTimestampError, sign, verify

BODY = b'{"entity":"model_version_alias","action":"created","data":{"name":"m","alias":"p"}}'
NOW = 1_800_000_000


def _verify(signature: str | None, *, body: bytes = BODY, timestamp: str = str(NOW)) -> None:
    verify(
        secret="s3cret",
        delivery_id="d-1",
        timestamp=timestamp,
        signature=signature,
        body=body,
        now=NOW + 5,
        max_age_s=300,
    )


def test_signature_matches_mlflow_format() -> None:
    # The value MLflow's own _generate_hmac_signature gives for these inputs.
    from mlflow.webhooks.delivery import _generate_hmac_signature

    expected = _generate_hmac_signature("s3cret", "d-1", str(NOW), BODY.decode())
    assert sign("s3cret", "d-1", str(NOW), BODY) == expected
    _verify(expected)


@pytest.mark.parametrize(
    "signature",
    [None, "", "v1,AAAA", sign("other", "d-1", str(NOW), BODY), "garbage"],
)
def test_wrong_or_missing_signatures_are_refused(signature: str | None) -> None:
    with pytest.raises(InvalidSignatureError):
        _verify(signature)


def test_altered_body_is_refused() -> None:
    with pytest.raises(InvalidSignatureError):
        _verify(sign("s3cret", "d-1", str(NOW), BODY), body=BODY + b" ")


def test_a_stale_delivery_is_refused() -> None:
    timestamp = str(NOW - 3600)
    with pytest.raises(InvalidSignatureError):
        _verify(sign("s3cret", "d-1", timestamp, BODY), timestamp=timestamp)


@pytest.mark.parametrize("timestamp", ["soon", "-1", "9" * 5000])
def test_a_malformed_timestamp_is_a_client_mistake(timestamp: str) -> None:
    with pytest.raises(MalformedTimestampError):
        _verify(sign("s3cret", "d-1", timestamp, BODY), timestamp=timestamp)
