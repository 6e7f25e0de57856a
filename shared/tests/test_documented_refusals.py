"""What the service stack answers on its own is in every service's OpenAPI document.

`ServiceMiddleware` refuses requests before any route runs (a body too slow, too large or not
JSON; too many requests in flight): a client can get those answers from any operation they
apply to, so each such operation documents them, with the error envelope.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from iris_shared.http import DocstringRoute, error_responses, json_body
from iris_shared.metrics import ServiceMetrics
from iris_shared.plain_routes import PlainRoute
from iris_shared.service import create_service_app
from iris_shared.settings import HTTPServiceSettings

ENVELOPE = "#/components/schemas/ErrorResponse"


class Order(BaseModel):
    count: int


def stack_openapi() -> dict[str, Any]:
    routes = APIRouter(route_class=DocstringRoute)

    async def raw_order(request: Request) -> Response:
        """Take an order read by the route itself."""
        return Response(b"{}", media_type="application/json")

    async def table(request: Request) -> Response:
        """Show a table."""
        return Response(b"{}", media_type="application/json")

    @routes.post("/orders", responses={503: {"description": "The kitchen is closed."}})
    async def order(body: Order) -> dict[str, int]:
        """Take an order."""
        return {"count": body.count}

    @routes.get("/menu")
    async def menu() -> dict[str, str]:
        """Show the menu."""
        return {}

    @routes.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Answer at once."""
        return {"status": "ok"}

    app = create_service_app(
        title="t",
        description="t",
        version="0",
        settings=HTTPServiceSettings(),
        metrics=ServiceMetrics(),
        routers=[routes],
        plain_routes=[
            PlainRoute(
                "/raw", raw_order, responses=error_responses(400), openapi_extra=json_body(Order)
            ),
            PlainRoute("/tables/{table}", table, methods=["GET"], response_model=Order),
        ],
        json_bodies=[Order],
    )
    return app.openapi()


@pytest.mark.parametrize(("path", "method"), [("/raw", "post"), ("/orders", "post")])
def test_a_body_route_documents_the_middlewares_refusals(path: str, method: str) -> None:
    responses = stack_openapi()["paths"][path][method]["responses"]

    for status in ("408", "413", "415", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": ENVELOPE}, (path, status)


def test_what_a_route_documents_itself_is_kept() -> None:
    responses = stack_openapi()["paths"]["/orders"]["post"]["responses"]

    assert responses["503"]["description"] == "The kitchen is closed."
    assert responses["503"]["content"]["application/json"]["schema"] == {"$ref": ENVELOPE}


def test_a_route_without_a_body_documents_overload_only_and_health_nothing() -> None:
    paths = stack_openapi()["paths"]

    assert {"408", "413", "415"}.isdisjoint(paths["/menu"]["get"]["responses"])
    assert "503" in paths["/menu"]["get"]["responses"]
    assert "503" not in paths["/healthz"]["get"]["responses"]


def test_the_envelope_is_among_the_components() -> None:
    assert "ErrorResponse" in stack_openapi()["components"]["schemas"]


def test_a_plain_route_is_documented_like_a_fastapi_route() -> None:
    paths = stack_openapi()["paths"]

    body_route = paths["/raw"]["post"]
    assert body_route["summary"] == "Take an order read by the route itself."
    assert body_route["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }
    assert "400" in body_route["responses"]
    templated = paths["/tables/{table}"]["get"]
    assert templated["parameters"] == [
        {"name": "table", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert templated["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }
    assert "head" not in paths["/tables/{table}"]
