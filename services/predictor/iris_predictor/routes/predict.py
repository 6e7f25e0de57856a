"""POST /predict and POST /predict/batch: the native protocol, on the hot path.

Both are plain routes (iris_shared.plain_routes), served before FastAPI: the body is decoded
and checked by `iris_predictor.inputs` (the shared schemas' rules, with their 400s), scored by
the prediction core, and answered with JSON encoded once (`answers.py`). The log line and the
per-row metrics are left to the recorder's thread.
"""

from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from iris_predictor import answers, inputs
from iris_predictor.core import NATIVE, Answer
from iris_predictor.inference import LoadedModel
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
# The server's id of every prediction answer, whatever the protocol: the key feedback is given
# under. X-Request-ID is the client's tracing id when it sent one (a gateway always does).
ANSWER_ID_HEADER = "Iris-Request-ID"


async def predict_rows(
    request: Request, rows: np.ndarray, protocol: str, model: LoadedModel | None = None
) -> Answer:
    """Have the core answer `rows` for this request, under the server's request id."""
    state: PredictorState = request.app.state.predictor
    trace = request.scope["state"]
    return await state.core.predict(
        rows,
        # Feedback joins labels with what is stored under this id: the server's, never the
        # client's; the client's X-Request-ID, if any, traces the request.
        request_id=server_request_id(request.scope),
        trace_id=trace["request_id"] if trace["request_id_from_client"] else None,
        protocol=protocol,
        model=model,
    )


async def predict(request: Request) -> Response:
    """Predict the species of one flower from its four measurements."""
    rows = inputs.one_flower(await request.body())
    answer = await predict_rows(request, rows, NATIVE)
    return Response(
        answers.one(answer.probabilities, answer.classes, answer.model_version, answer.request_id),
        media_type=_JSON,
        headers={ANSWER_ID_HEADER: answer.request_id},
    )


async def predict_batch(request: Request) -> Response:
    """Predict the species of many flowers, answering in input order."""
    state: PredictorState = request.app.state.predictor
    rows = inputs.batch_of_flowers(await request.body(), state.settings.max_batch_rows)
    answer = await predict_rows(request, rows, NATIVE)
    feedback_rows = min(len(rows), state.feedback_rows)
    return Response(
        answers.batch(
            answer.probabilities,
            answer.classes,
            answer.model_version,
            answer.request_id,
            feedback_rows,
        ),
        media_type=_JSON,
        headers={ANSWER_ID_HEADER: answer.request_id},
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
