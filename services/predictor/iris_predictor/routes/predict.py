"""POST /predict and POST /predict/batch."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException, Request

from iris_predictor.routes import DocstringRoute
from iris_predictor.state import PredictorState, StateDep
from iris_shared.http import error_responses
from iris_shared.schemas import (
    BatchPrediction,
    BatchPredictionRequest,
    BatchPredictionResponse,
    PredictionRequest,
    PredictionResponse,
)

router = APIRouter(tags=["predictions"], route_class=DocstringRoute)


def _predict_rows(
    state: PredictorState, request: Request, rows: list[list[float]]
) -> tuple[str, list[BatchPrediction]]:
    # Read the reference once: a swap during this request does not change the model it uses.
    served = state.holder.require()
    started = time.perf_counter()
    predictions = served.predict(rows)
    latency_ms = (time.perf_counter() - started) * 1000
    species = [p.species for p in predictions]
    state.metrics.observe(rows, species, served.version)
    state.prediction_log.record(
        request_id=getattr(request.state, "request_id", None),
        rows=rows,
        species=species,
        probabilities=[p.probabilities for p in predictions],
        model_version=served.version,
        latency_ms=latency_ms,
    )
    return served.version, [
        BatchPrediction(predicted_species=p.species, probabilities=p.probabilities)
        for p in predictions
    ]


# Plain `def` routes: FastAPI runs them in its threadpool, so scikit-learn never blocks the loop.
@router.post(
    "/predict",
    response_model=PredictionResponse,
    responses=error_responses(400, 413, 415, 503),
)
def predict(body: PredictionRequest, request: Request, state: StateDep) -> PredictionResponse:
    """Predict the species of one flower from its four measurements."""
    version, [prediction] = _predict_rows(state, request, [body.as_row()])
    return PredictionResponse(
        predicted_species=prediction.predicted_species,
        probabilities=prediction.probabilities,
        model_version=version,
    )


@router.post(
    "/predict/batch",
    response_model=BatchPredictionResponse,
    responses=error_responses(400, 413, 415, 503),
)
def predict_batch(
    body: BatchPredictionRequest, request: Request, state: StateDep
) -> BatchPredictionResponse:
    """Predict the species of many flowers, answering in input order."""
    limit = state.settings.max_batch_rows
    if len(body.instances) > limit:
        raise HTTPException(
            status_code=413,
            detail=f"The batch has {len(body.instances)} rows; the limit is {limit}.",
        )
    version, predictions = _predict_rows(state, request, [i.as_row() for i in body.instances])
    return BatchPredictionResponse(predictions=predictions, model_version=version)
