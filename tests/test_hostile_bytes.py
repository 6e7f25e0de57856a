"""Whatever bytes a client sends as a JSON body, every JSON route of both services answers it
with a 2xx or a 4xx in the error envelope, never a 5xx; and a body that is not UTF-8 anywhere
(a key, a string, between tokens) is a 400 `malformed_json` (RFC 8259: JSON is UTF-8).

Properties over raw bytes, sent to the real processes (`tests.support.sandbox`). The webhook's
bodies are signed with the predictor's secret, so that they reach its JSON parsing.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iris_predictor.webhooks import sign
from iris_shared.http import ErrorResponse
from tests.support.sandbox import Sandbox, sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
LABEL = {
    "request_id": "3f2c9a1e5b7d4e0f9a8b7c6d5e4f3a2b",
    "row": 0,
    "actual_species": "Iris-setosa",
}


@dataclass(frozen=True)
class Route:
    service: str  # "predictor" or "gateway"
    path: str
    # A body the route accepts: hostile bodies are made from it.
    template: Any
    signed: bool = False

    def __str__(self) -> str:
        return f"{self.service}:{self.path}:{type(self.template).__name__}"


ROUTES = [
    Route("predictor", "/predict", FLOWER),
    Route("predictor", "/predict/batch", {"instances": [FLOWER, FLOWER]}),
    Route(
        "predictor",
        "/webhooks/mlflow",
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": "Iris-Sandbox", "alias": "production", "version": "1"},
        },
        signed=True,
    ),
    Route("gateway", "/predict", FLOWER),
    Route("gateway", "/predict/batch", {"instances": [FLOWER, FLOWER]}),
    Route("gateway", "/retrain", {"data_rev": "HEAD", "params": {"split": {"test_size": 0.2}}}),
    Route("gateway", "/promote", {"model_version": "1", "model_name": "Iris-Sandbox"}),
    Route("gateway", "/feedback", LABEL),
    Route("gateway", "/feedback", [LABEL, {**LABEL, "row": 1}]),
]

# Sequences no UTF-8 decoder accepts: lone continuation bytes, bytes that never occur,
# overlong forms, encoded surrogates, code points past U+10FFFF and truncated sequences.
KNOWN_INVALID = [
    b"\x80",
    b"\xbf",
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


invalid_utf8 = st.sampled_from(KNOWN_INVALID) | st.binary(min_size=1, max_size=6).filter(
    lambda data: not is_utf8(data)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

MARK = "@@spliced@@"


def places(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Where bytes can be spliced into `document`: each key ("key") and each leaf ("value")."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*path, key), "key"
            yield from places(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from places(value, (*path, index))
    else:
        yield path, "value"


def marked(document: Any, path: tuple[Any, ...], kind: str, offset: int) -> Any:
    """A copy of `document` with MARK inside the key or leaf at `path` (a leaf that is not a
    string becomes one: the bytes go inside a JSON string either way)."""
    document = copy.deepcopy(document)
    *parents, last = path
    container = document
    for step in parents:
        container = container[step]
    if kind == "key":
        text = str(last)
        container[text[:offset] + MARK + text[offset:]] = container.pop(last)
    else:
        text = str(container[last])
        container[last] = text[:offset] + MARK + text[offset:]
    return document


@st.composite
def spliced(draw: st.DrawFn, template: Any) -> bytes:
    """`template` as JSON with a sequence that is not UTF-8 inside a key, a string value, or
    anywhere at all."""
    bad = draw(invalid_utf8)
    spots = list(places(template))
    where = draw(st.sampled_from(["anywhere", *[kind for _, kind in spots]]))
    if where == "anywhere":
        body = json.dumps(template).encode()
        at = draw(st.integers(0, len(body)))
        return body[:at] + bad + body[at:]
    path, kind = draw(st.sampled_from([spot for spot in spots if spot[1] == where]))
    offset = draw(st.integers(0, 12))
    return json.dumps(marked(template, path, kind, offset)).encode().replace(MARK.encode(), bad)


@st.composite
def reshaped(draw: st.DrawFn, template: Any) -> bytes:
    """The route's own keys (some of them) with any JSON values at all."""
    if isinstance(template, list):
        document: Any = draw(st.lists(st.just(template[0]).flatmap(reshaped_object), max_size=3))
    else:
        document = draw(reshaped_object(template))
    return json.dumps(document).encode()


def reshaped_object(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    nested = {
        key: reshaped_object(value) | json_values if isinstance(value, dict) else json_values
        for key, value in template.items()
    }
    return st.fixed_dictionaries({}, optional=nested)


@pytest.fixture(scope="module")
def hostile_sandbox(logs_dir: Path, trained_registry: str, api_token: str) -> Iterator[Sandbox]:
    with sandbox(logs_dir, trained_registry, api_token, "hostile-bytes") as services:
        yield services


@pytest.fixture(scope="module")
def client(api_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": f"Bearer {api_token}"}, timeout=30) as http:
        yield http


def post(client: httpx.Client, services: Sandbox, route: Route, body: bytes) -> httpx.Response:
    base = services.predictor_url if route.service == "predictor" else services.gateway_url
    headers = {"Content-Type": "application/json"}
    if route.signed:
        delivery_id, timestamp = str(uuid.uuid4()), str(int(time.time()))
        headers |= {
            "X-MLflow-Delivery-Id": delivery_id,
            "X-MLflow-Timestamp": timestamp,
            "X-MLflow-Signature": sign(services.webhook_secret, delivery_id, timestamp, body),
        }
    return client.post(f"{base}{route.path}", content=body, headers=headers)


def envelope(response: httpx.Response) -> ErrorResponse:
    """The error envelope of `response`, checked to have exactly its documented shape."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body, dict), body
    assert {"error", "message"} <= set(body) <= {"error", "message", "detail"}, body
    return ErrorResponse.model_validate(body)


def assert_answered_without_a_server_error(response: httpx.Response, body: bytes) -> None:
    assert response.status_code < 500, (body, response.status_code, response.text)
    if response.status_code >= 400:
        envelope(response)


HYPOTHESIS = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow], max_examples=40
)


def test_every_template_is_accepted(hostile_sandbox: Sandbox, client: httpx.Client) -> None:
    """The bodies the properties corrupt are valid: what they refuse is the corruption."""
    for route in ROUTES:
        response = post(client, hostile_sandbox, route, json.dumps(route.template).encode())
        # Feedback on an answer that was never given is a 404 after validation passed.
        assert response.status_code in (200, 202, 404), (route, response.text)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@HYPOTHESIS
@given(data=st.data())
def test_a_body_that_is_not_utf8_anywhere_is_400_malformed_json(
    hostile_sandbox: Sandbox, client: httpx.Client, route: Route, data: st.DataObject
) -> None:
    body = data.draw(spliced(route.template), label="body")
    assert not is_utf8(body)

    response = post(client, hostile_sandbox, route, body)

    assert response.status_code == 400, (body, response.status_code, response.text)
    refusal = envelope(response)
    assert refusal.error == "malformed_json", (body, response.text)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@HYPOTHESIS
@given(body=st.binary(max_size=300))
def test_any_bytes_are_answered_without_a_server_error(
    hostile_sandbox: Sandbox, client: httpx.Client, route: Route, body: bytes
) -> None:
    response = post(client, hostile_sandbox, route, body)

    assert_answered_without_a_server_error(response, body)
    if not is_utf8(body):
        assert response.status_code == 400, (body, response.text)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@HYPOTHESIS
@given(data=st.data())
def test_the_routes_keys_with_any_json_values_are_answered_without_a_server_error(
    hostile_sandbox: Sandbox, client: httpx.Client, route: Route, data: st.DataObject
) -> None:
    body = data.draw(reshaped(route.template), label="body")

    response = post(client, hostile_sandbox, route, body)

    assert_answered_without_a_server_error(response, body)


def unparseable(route: Route) -> dict[str, bytes]:
    document = json.dumps(route.template)
    return {
        "finding-14-5": b'{"sepal_length\xff": 5.1, "sepal_width": 3.5, "petal_length": 1.4, '
        b'"petal_width": 0.2}',
        "utf-16": document.encode("utf-16"),
        "utf-32": document.encode("utf-32"),
        "byte-order-mark": b"\xef\xbb\xbf" + document.encode(),
        "nested-too-deep": b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        "lone-surrogate": b'{"a": "\\ud800"}',
    }


@pytest.mark.parametrize(
    ("route", "body"),
    [
        pytest.param(route, body, id=f"{route}-{name}")
        for route in ROUTES
        for name, body in unparseable(route).items()
    ],
)
def test_bodies_no_json_parser_should_take_are_400_malformed_json(
    hostile_sandbox: Sandbox, client: httpx.Client, route: Route, body: bytes
) -> None:
    """The finding's own body, UTF-16/32 (which Python's json.loads would take), a byte-order
    mark, nesting past any parser's depth and a lone surrogate escape."""
    response = post(client, hostile_sandbox, route, body)

    assert response.status_code == 400, (body[:60], response.text)
    assert envelope(response).error == "malformed_json", response.text


@pytest.mark.parametrize(
    "version", ["944510860861664225994766620", "2147483648", "0", "00", "01", "-1", "1.0"]
)
def test_a_version_mlflow_could_never_hold_is_refused_before_asking_it(
    hostile_sandbox: Sandbox, client: httpx.Client, version: str
) -> None:
    """MLflow keeps versions in an SQL INTEGER column (32 bits on PostgreSQL) and writes them
    without leading zeros; the finding's version reached it and came back as a 502."""
    response = client.post(
        f"{hostile_sandbox.gateway_url}/promote", json={"model_version": version}
    )

    assert response.status_code == 400, response.text
    refusal = envelope(response)
    assert refusal.error == "validation_error"
    assert [problem.field for problem in refusal.detail or []] == ["model_version"]


def test_the_largest_version_mlflow_could_hold_is_looked_up(
    hostile_sandbox: Sandbox, client: httpx.Client
) -> None:
    response = client.post(
        f"{hostile_sandbox.gateway_url}/promote", json={"model_version": str(2**31 - 1)}
    )

    assert response.status_code == 404, response.text
    assert envelope(response).error == "model_version_not_found"


@pytest.mark.parametrize("name", ["a/b", "a:b", "nul\x00", "tab\tname", "del\x7f"])
def test_a_model_name_mlflow_could_never_hold_is_refused_before_asking_it(
    hostile_sandbox: Sandbox, client: httpx.Client, name: str
) -> None:
    """MLflow refuses '/' and ':' in names, and PostgreSQL cannot store a NUL."""
    response = client.post(
        f"{hostile_sandbox.gateway_url}/promote", json={"model_version": "1", "model_name": name}
    )

    assert response.status_code == 400, response.text
    refusal = envelope(response)
    assert [problem.field for problem in refusal.detail or []] == ["model_name"]
