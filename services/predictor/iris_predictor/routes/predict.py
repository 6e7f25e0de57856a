"""POST /predict and POST /predict/batch: the hot path.

Both are plain routes (iris_shared.plain_routes), served before FastAPI: the body is decoded
and checked by `iris_predictor.inputs` (the shared schemas' rules, with their 400s), scored by
the micro-batcher, and answered with JSON encoded once (`answers.py`). The log line and the
per-row metrics are left to the recorder's thread.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from iris_predictor import answers, inputs
from iris_predictor.recorder import PredictionRecord
from iris_predictor.state import PredictorState
from iris_shared.http import error_responses, json_body, server_request_id
from iris_shared.plain_routes import PlainRoute
from iris_shared.schemas import (
    BatchPredictionRequest,
    BatchPredictionResponse,
    PredictionRequest,
    PredictionResponse,
)

JSON_BODIES = (PredictionRequest, BatchPredictionRequest)
_JSON = "application/json"


async def _score(
    state: PredictorState, request: Request, rows: np.ndarray
) -> tuple[str, str, np.ndarray, tuple[str, ...]]:
    # Read the reference once: a swap during this request does not change the model it uses.
    served = state.holder.require()
    started = time.perf_counter()
    probabilities = await state.batcher.score(served, rows)
    latency_ms = (time.perf_counter() - started) * 1000
    # Feedback joins labels with what is stored under this id: the server's, never the client's.
    request_id = server_request_id(request.scope)
    trace: dict[str, Any] = request.scope["state"]
    classes = served.classes
    state.metrics.count_predictions(probabilities, classes, served.version)
    state.recorder.record(
        PredictionRecord(
            time=time.time(),
            request_id=request_id,
            trace_id=trace["request_id"] if trace["request_id_from_client"] else None,
            model_version=served.version,
            latency_ms=latency_ms,
            rows=rows,
            probabilities=probabilities,
            classes=classes,
        )
    )
    return request_id, served.version, probabilities, classes


async def predict(request: Request) -> Response:
    """Predict the species of one flower from its four measurements."""
    state: PredictorState = request.app.state.predictor
    rows = inputs.one_flower(await request.body())
    request_id, version, probabilities, classes = await _score(state, request, rows)
    return Response(answers.one(probabilities, classes, version, request_id), media_type=_JSON)


async def predict_batch(request: Request) -> Response:
    """Predict the species of many flowers, answering in input order."""
    state: PredictorState = request.app.state.predictor
    rows = inputs.batch_of_flowers(await request.body(), state.settings.max_batch_rows)
    request_id, version, probabilities, classes = await _score(state, request, rows)
    feedback_rows = min(len(rows), state.feedback_rows)
    return Response(
        answers.batch(probabilities, classes, version, request_id, feedback_rows),
        media_type=_JSON,
    )


ROUTES = (
    PlainRoute(
        "/predict",
        predict,
        tags=["predictions"],
        response_model=PredictionResponse,
        responses=error_responses(400, 413, 415, 503),
        openapi_extra=json_body(PredictionRequest),
    ),
    PlainRoute(
        "/predict/batch",
        predict_batch,
        tags=["predictions"],
        response_model=BatchPredictionResponse,
        responses=error_responses(400, 413, 415, 503),
        openapi_extra=json_body(BatchPredictionRequest),
    ),
)
