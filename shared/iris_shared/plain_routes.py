"""Routes the service app serves itself, before FastAPI: protocol adapters on the hot path.

A `PlainRoute` is a Starlette route, `endpoint(request) -> Response`, that `ServiceApp` matches
before FastAPI sees the request. FastAPI's per-request machinery (dependency solving, response
models, the router's walk over every route) costs as much as the model on the prediction path,
and protocol bodies (V2 binary tensors, CSV) are not what FastAPI validates anyway. It is plain
in the open: it has no `dependencies=`, nothing FastAPI-like that could silently be skipped;
what must run before the endpoint (a token check) is listed in `guards` and runs every time.

    ServiceApp.__call__
    ├── PlainRoutes.match            a plain route's template -> scope["route"]
    └── ServiceMiddleware            ids, limits, the route's media types, HTTP metrics
        ├── guards, then endpoint    errors answered by the app's exception handlers
        └── FastAPI as usual         every other request

Documentation: each plain route also builds a FastAPI route that is never mounted (`stub`), so
OpenAPI shows it with its summary, body, answers and path parameters like any other route.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from iris_shared.http import DocstringRoute, Scope

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Request], Awaitable[None]]

JSON_ONLY: tuple[str, ...] = ("application/json",)


class PlainRoute(Route):
    """A route `ServiceApp` serves before FastAPI.

    - `media_types`: the request Content-Types `ServiceMiddleware` lets through to a body (the
      others get 415 in the error envelope); None lets any through, the endpoint checks (MLflow's
      /invocations answers 415 its own way; V2 binary bodies come as application/octet-stream
      or with no Content-Type at all).
    - `guards`: run in order before the endpoint; one that raises answers the request.
    - `response_model`, `responses`, `openapi_extra`, `tags`, `summary`: documentation only.
    """

    def __init__(
        self,
        path: str,
        endpoint: Endpoint,
        *,
        methods: Collection[str] = ("POST",),
        media_types: Collection[str] | None = JSON_ONLY,
        guards: Sequence[Guard] = (),
        tags: Sequence[str] = (),
        summary: str | None = None,
        response_model: Any = None,
        responses: dict[int | str, dict[str, Any]] | None = None,
        openapi_extra: dict[str, Any] | None = None,
        include_in_schema: bool = True,
    ) -> None:
        super().__init__(path, endpoint, methods=list(methods), include_in_schema=include_in_schema)
        self.endpoint: Endpoint = endpoint
        self.media_types = (
            None if media_types is None else frozenset(m.encode("latin-1") for m in media_types)
        )
        self.guards = tuple(guards)
        self._documentation = {
            "tags": list(tags),
            "summary": summary,
            "response_model": response_model,
            "responses": responses,
            "openapi_extra": openapi_extra,
        }

    def accepts(self, media_type: bytes) -> bool:
        """Whether a body of this (lower-case, parameterless) media type may reach the route."""
        if self.media_types is None or media_type in self.media_types:
            return True
        return media_type.endswith(b"+json") and b"application/json" in self.media_types

    async def answer(self, request: Request) -> Response:
        for guard in self.guards:
            await guard(request)
        return await self.endpoint(request)

    def stub(self) -> DocstringRoute:
        """The FastAPI route that documents this one in OpenAPI; never mounted nor called."""
        documentation = dict(self._documentation)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in self.param_convertors
        ]
        if parameters:
            extra = dict(documentation["openapi_extra"] or {})
            extra["parameters"] = [*extra.get("parameters", []), *parameters]
            documentation["openapi_extra"] = extra
        endpoint = self.endpoint

        # The docstring, and nothing FastAPI would read as a parameter.
        async def documented() -> None:
            raise AssertionError("a documentation stub is never served")

        documented.__doc__ = inspect.getdoc(endpoint)
        documented.__name__ = getattr(endpoint, "__name__", "plain_route")
        methods = sorted((self.methods or {"GET"}) - {"HEAD"})
        return DocstringRoute(
            self.path,
            documented,
            methods=methods,
            name=self.name,
            include_in_schema=self.include_in_schema,
            **{k: v for k, v in documentation.items() if v is not None},
        )


class PlainRoutes:
    """The plain routes of an app, matched in declaration order; fixed paths by one lookup."""

    def __init__(self, routes: Iterable[PlainRoute]) -> None:
        self.routes = list(routes)
        self._fixed: dict[str, list[PlainRoute]] = {}
        self._templated: list[PlainRoute] = []
        for route in self.routes:
            if route.param_convertors:
                self._templated.append(route)
            else:
                self._fixed.setdefault(route.path, []).append(route)

    def __bool__(self) -> bool:
        return bool(self.routes)

    def match(self, scope: Scope) -> tuple[Match, PlainRoute | None, dict[str, Any]]:
        """FULL with the route and its path parameters; PARTIAL (wrong method) with the route;
        NONE when no plain route has this path (FastAPI's, then)."""
        if scope.get("root_path"):
            return Match.NONE, None, {}
        partial: PlainRoute | None = None
        for route in self._fixed.get(scope["path"], ()):
            if route.methods is None or scope["method"] in route.methods:
                return Match.FULL, route, {}
            partial = partial or route
        for route in self._templated:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return match, route, child["path_params"]
            if match is Match.PARTIAL:
                partial = partial or route
        if partial is not None:
            return Match.PARTIAL, partial, {}
        return Match.NONE, None, {}
