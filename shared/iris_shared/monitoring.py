"""Whether the model is still right: the contracts the trainer, predictor and gateway share.

- **Input drift.** At training time the trainer logs a `ReferenceProfile` of the training split
  (per feature: decile cut points and the share of rows between them) as the run artefact
  `REFERENCE_PROFILE_ARTIFACT`. The predictor loads it with the version it serves and compares a
  sliding window of live inputs with it: `psi` per feature, exported as
  `iris_feature_drift_psi{feature}`.
- **Live accuracy.** The predictor keeps what it answered, per request id, in Redis for the
  feedback window (`FeedbackKeys.prediction`). The gateway's `POST /feedback` joins a label with
  it, once per row, and counts whether the answer was right.

Every key starts with the deployment's namespace (`JOBS_NAMESPACE`), as the job keys do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from iris_shared.schemas import FEATURE_NAMES

REFERENCE_PROFILE_ARTIFACT: Final = "reference_profile.json"
PROFILE_BINS: Final = 10
# The usual reading of the population stability index: below 0.1 stable, 0.1 to 0.2 a shift
# worth watching, above 0.2 a shift that changes what the model sees.
PSI_ALERT_THRESHOLD: Final = 0.2
# An empty bin would make PSI infinite; both sides are floored at this share.
_PSI_FLOOR: Final = 1e-4

DEFAULT_FEEDBACK_WINDOW_S: Final = 7 * 24 * 3600


class FeatureProfile(BaseModel):
    """One feature of the training split: cut points, and the share of rows in each bin."""

    cut_points: list[float] = Field(description="Interior bin edges, ascending (bins - 1).")
    proportions: list[float] = Field(description="Share of training rows in each bin (sum 1).")

    def proportions_of(self, values: np.ndarray) -> np.ndarray:
        """The share of `values` in each of this profile's bins (the outer bins are open)."""
        bins = np.searchsorted(np.asarray(self.cut_points), values, side="right")
        counts = np.bincount(bins, minlength=len(self.proportions)).astype(float)
        return counts / max(len(values), 1)


class ReferenceProfile(BaseModel):
    """What the model was trained on, feature by feature, for drift scores."""

    rows: int
    features: dict[str, FeatureProfile]

    @classmethod
    def of(cls, rows: np.ndarray, bins: int = PROFILE_BINS) -> ReferenceProfile:
        """The profile of a (n, 4) array in FEATURE_NAMES order."""
        features = {}
        for index, name in enumerate(FEATURE_NAMES):
            column = np.asarray(rows[:, index], dtype=float)
            # Quantile cut points; repeated values (a discrete measurement) merge bins.
            cuts = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
            profile = FeatureProfile(cut_points=cuts.tolist(), proportions=[])
            profile.proportions = profile.proportions_of(column).tolist()
            features[name] = profile
        return cls(rows=len(rows), features=features)

    def psi(self, rows: np.ndarray) -> dict[str, float]:
        """The PSI of each feature of `rows` (n, 4) against this profile."""
        return {
            name: psi(self.features[name].proportions, self.features[name].proportions_of(column))
            for name, column in zip(FEATURE_NAMES, np.asarray(rows).T, strict=True)
        }


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected)."""
    e = np.maximum(np.asarray(expected, dtype=float), _PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), _PSI_FLOOR)
    value = float(np.sum((a - e) * np.log(a / e)))
    return value if math.isfinite(value) else 0.0


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
