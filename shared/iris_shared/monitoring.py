"""Whether the model is still right: the feedback contracts the predictor and gateway share.

Input drift has its own module, `iris_shared.drift` (it needs numpy, which the gateway does
not have).

- **Live accuracy.** The predictor keeps what it answered, per request id, in Redis for the
  feedback window (`FeedbackKeys.prediction`). The gateway's `POST /feedback` joins a label with
  it, once per row, and counts whether the answer was right.

Every key starts with the deployment's namespace (`JOBS_NAMESPACE`), as the job keys do.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_FEEDBACK_WINDOW_S: Final = 7 * 24 * 3600


# The three species, as the data set and the predictions spell them (SPECIES).
Species = Literal["Iris-setosa", "Iris-versicolor", "Iris-virginica"]

RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class Feedback(BaseModel):
    """The true species of a flower the service predicted, by the prediction's request id."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2a9c4e-1b7d-4c1e-9a51-0d6f1e2b7c11",
                    "actual_species": "Iris-setosa",
                }
            ]
        },
    )

    request_id: RequestId = Field(description="The request_id of the prediction's answer.")
    row: int = Field(
        default=0, ge=0, lt=10_000, description="For a batch: the row's index in it (0-based)."
    )
    actual_species: Species


class StoredPrediction(BaseModel):
    """What the predictor keeps of one answered request, for joining feedback with it."""

    model_version: str
    time: float = Field(description="Unix time of the answer.")
    rows: list[list[float]] = Field(description="Inputs in FEATURE_NAMES order.")
    predicted_species: list[str]


class LabelledRow(BaseModel):
    """A prediction's inputs with its true species: a row `iris-mlops data add-feedback` adds."""

    request_id: str
    row: int
    model_version: str
    features: list[float]
    predicted_species: str
    actual_species: Species
    labelled_at: float


class FeedbackKeys:
    """Where one deployment's predictions and their labels live in Redis."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        # request id -> StoredPrediction (JSON), expiring after the feedback window.
        self.prediction_prefix = f"{namespace}:prediction:"
        # request ids by answer time: bounds how many predictions are kept (oldest go first).
        self.predictions_index = f"{namespace}:predictions"
        # request id -> bytes counted for it, and their total: bounds the bytes kept.
        self.prediction_sizes = f"{namespace}:predictions:sizes"
        self.prediction_bytes = f"{namespace}:predictions:bytes"
        # LabelledRow JSON, oldest first, until `iris-mlops data add-feedback` takes them.
        self.labelled = f"{namespace}:feedback:labelled"

    def prediction(self, request_id: str) -> str:
        return f"{self.prediction_prefix}{request_id}"

    def answered(self, request_id: str, row: int) -> str:
        """Set once a row got its label: a second label for it is a conflict."""
        return f"{self.namespace}:feedback:answered:{request_id}:{row}"

    def outcomes(self, model_version: str) -> str:
        """The last labelled answers of a version, newest first: '1' right, '0' wrong."""
        return f"{self.namespace}:feedback:outcomes:{model_version}"

    def shadow_counts(self, challenger_version: str) -> str:
        """Hash of how often the challenger agreed with production: fields agree, disagree."""
        return f"{self.namespace}:shadow:{challenger_version}"
