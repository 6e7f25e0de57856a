"""Feedback, the contracts the predictor, gateway and trainer share: is the model still right?

Input drift has its own module, `iris_shared.drift` (it needs numpy, which the gateway does
not have).

- **Live accuracy.** The predictor keeps what it answered, per request id, in Redis for the
  feedback window (`FeedbackKeys.prediction`). The gateway's `POST /feedback` joins a label with
  it, once per row, and counts whether the answer was right.

Every key starts with the deployment's namespace (`JOBS_NAMESPACE`), as the job keys do.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from iris_shared.schemas import FEATURE_NAMES, SPECIES

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
    # Strict: `false` or `"1"` is a client's mistake, not row 0 or 1.
    row: StrictInt = Field(
        default=0, ge=0, lt=10_000, description="For a batch: the row's index in it (0-based)."
    )
    actual_species: Species


@dataclass(frozen=True)
class StoredPrediction:
    """What the predictor keeps of one answered request, for joining feedback with it.

    Kept in Redis as one string (`encode`): a JSON head (`STORED_HEAD_FIELDS`), a newline, then
    the rows as little-endian float64 (FEATURE_NAMES order, row after row) and the predicted
    species as one byte per row, an index into `classes`. Raw numbers cost the predictor a copy
    where JSON would format every value; the gateway's Lua script reads them with
    `struct.unpack` (`STORED_ROW_FORMAT`).
    """

    model_version: str
    time: float  # Unix time of the answer
    classes: tuple[str, ...]
    rows: bytes
    predicted: bytes

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.predicted) * STORED_ROW_BYTES:
            raise ValueError(
                f"{len(self.predicted)} predicted rows need {STORED_ROW_BYTES} bytes of "
                f"measurements each, got {len(self.rows)} bytes"
            )
        if self.predicted and max(self.predicted) >= len(self.classes):
            raise ValueError("a predicted index is not one of the classes")

    @classmethod
    def from_rows(
        cls,
        model_version: str,
        time: float,
        rows: Sequence[Sequence[float]],
        predicted_species: Sequence[str],
        classes: Sequence[str] = SPECIES,
    ) -> StoredPrediction:
        """From plain lists (the predictor packs its arrays straight into the fields)."""
        classes = tuple(classes)
        packed = b"".join(struct.pack(STORED_ROW_FORMAT, *row) for row in rows)
        indices = bytes(classes.index(species) for species in predicted_species)
        return cls(model_version, time, classes, packed, indices)

    @property
    def row_count(self) -> int:
        return len(self.predicted)

    def features(self, row: int) -> list[float]:
        return list(struct.unpack_from(STORED_ROW_FORMAT, self.rows, row * STORED_ROW_BYTES))

    def predicted_species(self, row: int) -> str:
        return self.classes[self.predicted[row]]

    def all_features(self) -> list[list[float]]:
        return [self.features(row) for row in range(self.row_count)]

    def all_predicted_species(self) -> list[str]:
        return [self.classes[index] for index in self.predicted]

    def encode(self) -> bytes:
        head = {
            "model_version": self.model_version,
            "time": self.time,
            "classes": list(self.classes),
            "row_count": self.row_count,
        }
        assert tuple(head) == STORED_HEAD_FIELDS
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.rows + self.predicted

    @classmethod
    def decode(cls, raw: bytes) -> StoredPrediction:
        head_json, separator, data = raw.partition(b"\n")
        if not separator:
            raise ValueError("no newline after the head")
        head = json.loads(head_json)
        split = head["row_count"] * STORED_ROW_BYTES
        if len(data) != split + head["row_count"]:
            raise ValueError(f"{head['row_count']} rows do not fit {len(data)} bytes")
        return cls(
            str(head["model_version"]),
            float(head["time"]),
            tuple(head["classes"]),
            data[:split],
            data[split:],
        )


# The stored head's fields, in order: the gateway's Lua script reads them by these names.
STORED_HEAD_FIELDS: Final = ("model_version", "time", "classes", "row_count")
# One row's measurements as `struct` (Python's and Redis Lua's) packs them.
STORED_ROW_FORMAT: Final = "<" + "d" * len(FEATURE_NAMES)
STORED_ROW_BYTES: Final = struct.calcsize(STORED_ROW_FORMAT)


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
        # request id -> StoredPrediction (encoded), expiring after the feedback window.
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
