"""The curl commands the READMEs give for the gateway and the predictor call routes that exist,
with the API token where the route asks for one: a person who copies them gets answers, not a
404 or a 401. Routes and their security come from each service's own app and OpenAPI schema,
so a route that moves or starts needing the token fails here until the README follows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from iris_devstack.processes import REPO_ROOT

READMES = ("README.md", "infra/README.md")
# The ports `make up` gives the services (the README's addresses).
GATEWAY_PORT, PREDICTOR_PORT = 8002, 8001
URL = re.compile(r"(?:https?://)?(?:localhost|127\.0\.0\.1):(\d+)(/[^\s'\"`)]*)")
METHOD = re.compile(r"(?:-X|--request)\s+([A-Z]+)")
SENDS_A_BODY = re.compile(r"\s(?:-d|--data(?:-binary|-raw)?|--json)\b")
# A placeholder such as `<id>` stands for one path segment.
PLACEHOLDER = re.compile(r"<[^>/]+>")


@dataclass(frozen=True)
class Command:
    where: str
    text: str
    port: int
    method: str
    path: str


def curl_commands() -> Iterator[Command]:
    """Every curl command of the READMEs that names a service port, continuation lines joined
    and each part of a pipeline on its own."""
    for name in READMES:
        lines = (REPO_ROOT / name).read_text().splitlines()
        number = 0
        while number < len(lines):
            start, line = number, lines[number]
            while line.endswith("\\") and number + 1 < len(lines):
                number += 1
                line = line[:-1] + " " + lines[number]
            number += 1
            for part in line.split("|"):
                if "curl " not in part or (url := URL.search(part)) is None:
                    continue
                method = METHOD.search(part)
                verb = method[1] if method else ("POST" if SENDS_A_BODY.search(part) else "GET")
                path = PLACEHOLDER.sub("placeholder", url[2].split("?", 1)[0])
                yield Command(f"{name}, line {start + 1}", part.strip(), int(url[1]), verb, path)


def routes_of(app: FastAPI) -> dict[tuple[str, re.Pattern[str]], bool]:
    """(method, path pattern) of every route the app answers -> whether it asks for a token."""
    routes: dict[tuple[str, re.Pattern[str]], bool] = {}
    for template, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            routes[(method.upper(), _pattern(template))] = bool(operation.get("security"))
    for route in app.routes:
        # Routes kept out of the schema (/metrics, the docs) take no token.
        for method in getattr(route, "methods", None) or ():
            routes.setdefault((method, _pattern(route.path)), False)  # type: ignore[attr-defined]
    return routes


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


@pytest.fixture(scope="module")
def services(monkeypatch_module: pytest.MonkeyPatch) -> dict[int, FastAPI]:
    from iris_gateway.app import create_app as create_gateway
    from iris_predictor.app import create_app as create_predictor

    # Building the apps reads settings; nothing is started, nothing is connected to.
    monkeypatch_module.setenv("API_TOKEN", "a-token-long-enough-for-the-settings")
    return {GATEWAY_PORT: create_gateway(), PREDICTOR_PORT: create_predictor()}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_readme_shows_each_step_of_the_workflow_through_the_gateway() -> None:
    """The parser finds the commands (so the test below cannot pass on none)."""
    shown = {(c.method, c.path) for c in curl_commands() if c.port == GATEWAY_PORT}
    workflow = {("POST", "/predict"), ("POST", "/retrain"), ("GET", "/jobs/placeholder")}
    workflow |= {("POST", "/promote"), ("POST", "/feedback"), ("POST", "/invocations")}
    assert workflow <= shown, f"not shown: {workflow - shown}"


def test_every_curl_command_calls_a_route_that_exists_with_the_token_it_needs(
    services: dict[int, FastAPI],
) -> None:
    problems = []
    for command in curl_commands():
        if command.port not in services:
            continue  # Prometheus, Alertmanager, MLflow: not this repository's routes
        routes = routes_of(services[command.port])
        matched = [
            needs_token
            for (method, pattern), needs_token in routes.items()
            if method == command.method and pattern.match(command.path)
        ]
        if not matched:
            problems.append(f"{command.where}: no {command.method} {command.path}")
        elif any(matched) and "Authorization: Bearer" not in command.text:
            problems.append(
                f"{command.where}: {command.method} {command.path} needs the token: {command.text}"
            )
    assert not problems, "\n".join(problems)
