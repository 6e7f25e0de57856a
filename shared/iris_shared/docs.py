"""The API documentation pages, served with their scripts and styles from the service itself.

FastAPI's own `/docs` and `/redoc` load Swagger UI and ReDoc from a CDN: offline, or behind a
firewall that blocks it, the page stays blank. The same pages here take the files that the
`fastapi-offline` package ships (Swagger UI 5, which reads OpenAPI 3.1, and ReDoc) from
`DOCS_ASSETS_PATH` on the service:

    GET /docs                   Swagger UI
    GET /docs/oauth2-redirect   Swagger UI's OAuth2 callback page
    GET /redoc                  ReDoc
    GET /docs/assets/...        the pages' scripts, styles and icon
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
OAUTH2_REDIRECT_URL: Final = "/docs/oauth2-redirect"
DOCS_ASSETS_PATH: Final = "/docs/assets"


def docs_assets_directory() -> Path:
    """The folder of the files the pages load: the package data of `fastapi_offline`."""
    return Path(str(files("fastapi_offline") / "static"))


def serve_docs(app: FastAPI) -> None:
    """Add the documentation pages to `app` (made with `docs_url=None, redoc_url=None`)."""
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=docs_assets_directory()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
