"""A constant-answer endpoint on the predictor's server stack, for `make bench`: `POST /predict`
answers a fixed body shaped like the predictor's answer, `GET /readyz` 200 at once. It receives
the body but neither parses it nor touches a model, so it costs what the server stack alone
costs (runner, framework, middleware, HTTP metrics, a plain route like the predictor's
/predict): the ceiling the predictor is measured against. bench/servers.py starts it with the
predictor's own command from infra/local/supervisord.conf, `python -m bench.constant_app` in
place of `python -m iris_predictor`.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from iris_predictor.config import get_settings
from iris_predictor.metrics import PredictorMetrics
from iris_shared.logging import configure_logging
from iris_shared.plain_routes import PlainRoute
from iris_shared.schemas import PredictionResponse
from iris_shared.server import run
from iris_shared.service import create_service_app

# The schema's own example answer: shaped like the predictor's, whatever fields it gains.
ANSWER = json.dumps(
    {
        name: field.examples[0]
        for name, field in PredictionResponse.model_fields.items()
        if field.examples
    }
).encode()


async def predict(request: Request) -> Response:
    """Answer every flower with the same prediction."""
    await request.body()
    return Response(ANSWER, media_type="application/json")


async def readyz(request: Request) -> Response:
    """Report ready: there is no model to wait for."""
    return Response(b'{"status":"ready"}', media_type="application/json")


def create_app() -> FastAPI:
    # This must mirror iris_predictor.app.create_app: the same builder, settings (body limit,
    # concurrency limit) and metrics class, only the routes differ. Otherwise the comparison
    # measures something other than the predictor's own work.
    settings = get_settings()
    configure_logging("bench-constant", settings.log_level)
    return create_service_app(
        title="iris-mlops bench: constant answer",
        description="A fixed answer on the predictor's server stack.",
        version="0.1.0",
        settings=settings,
        metrics=PredictorMetrics(),
        routers=[],
        plain_routes=[
            PlainRoute("/predict", predict),
            PlainRoute("/readyz", readyz, methods=["GET"]),
        ],
    )


if __name__ == "__main__":
    # As iris_predictor/__main__.py serves the predictor: same runner, same PREDICTOR_ settings
    # (workers, host, port), so the worker count is read in one place.
    run("bench-constant", "bench.constant_app:create_app", get_settings())
