"""The documented shapes of the protocols the predictor speaks besides its own, for OpenAPI.

The predictor answers them (iris_predictor.routes.open_inference, .mlflow_scoring) and the
gateway documents its pass-through with the same models, so both documents agree.

- Open Inference Protocol V2: errors are `{"error": "<message>"}` (the service stack's own
  refusals, 408/413/503, add a `message` and keep `error` a string: the same shape to a client).
- MLflow's scoring protocol: `{"predictions": [...]}`, errors `{"error_code", "message"}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class InferenceErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: str


class InferenceTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferenceResponse(BaseModel):
    """A V2 inference answer's JSON part (binary outputs follow it when asked for)."""

    model_config = ConfigDict(extra="allow")

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="`request_id`: the server's id of the answer (feedback key)."
    )
    outputs: list[InferenceTensor]


class InferenceRequest(BaseModel):
    """A V2 inference request: one input tensor [n, 4] of FP32 or FP64 measurements."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferenceTensor]
    outputs: list[dict[str, Any]] | None = None


class ModelMetadataResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


class MlflowErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    error_code: str
    message: str


class MlflowPredictions(BaseModel):
    predictions: list[str] = Field(description="The species of each row, in input order.")
