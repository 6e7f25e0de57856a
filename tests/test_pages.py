"""The pages the README sends a person to, rendered by a real headless browser with no CDN in
reach: each must show its title and what a person came for, not only answer 200."""

from __future__ import annotations

import re

import pytest

from tests.support.browser import rendered, title

pytestmark = pytest.mark.integration


def operations(document: str) -> set[str]:
    """The paths of the operations Swagger UI drew."""
    return set(re.findall(r'class="opblock-summary-path"[^>]*data-path="([^"]+)"', document))


def test_the_gateways_docs_render_every_route_without_a_cdn(gateway_url: str) -> None:
    page = rendered(f"{gateway_url}/docs")

    assert title(page) == "iris-mlops gateway - Swagger UI"
    assert {"/predict", "/retrain", "/jobs/{job_id}", "/feedback"} <= operations(page)


def test_the_predictors_docs_render_every_protocol_without_a_cdn(predictor_url: str) -> None:
    page = rendered(f"{predictor_url}/docs")

    assert title(page) == "iris-mlops predictor - Swagger UI"
    assert {"/predict", "/v2/models/{name}/infer", "/invocations"} <= operations(page)


def test_redoc_renders_the_gateways_api_without_a_cdn(gateway_url: str) -> None:
    page = rendered(f"{gateway_url}/redoc")

    assert title(page) == "iris-mlops gateway - ReDoc"
    assert re.search(r"<h1[^>]*>\s*iris-mlops gateway", page), "ReDoc drew the API's title"
