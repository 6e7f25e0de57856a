"""Request and response schemas for predictions, models and promotion.

The predictor validates with these models and the gateway documents its proxied
routes with the same ones, so the public contract is written exactly once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

FEATURE_NAMES: tuple[str, ...] = ("sepal_length", "sepal_width", "petal_length", "petal_width")
SPECIES: tuple[str, ...] = ("Iris-setosa", "Iris-versicolor", "Iris-virginica")

# The largest Iris flowers measure about 8 cm (sepal) and 7 cm (petal); 50 cm leaves room for
# odd inputs while still refusing values that can only be unit or typing mistakes.
MAX_MEASUREMENT_CM = 50.0

# Rows one /predict/batch request may carry. Body limits follow from it on every service, so
# any valid batch of this size passes the gateway and the predictor alike: a row written with
# full-precision floats takes about 150 bytes of JSON, 256 leaves room for spaces.
MAX_BATCH_ROWS = 10_000
MAX_ROW_JSON_BYTES = 256


def batch_body_limit(rows: int = MAX_BATCH_ROWS) -> int:
    """The largest request body, in bytes, that a batch of `rows` rows may need."""
    return rows * MAX_ROW_JSON_BYTES + 4096


Centimetres = Annotated[
    float,
    Field(
        gt=0,
        le=MAX_MEASUREMENT_CM,
        allow_inf_nan=False,
        strict=True,
        description=f"Length in centimetres, greater than 0 and at most {MAX_MEASUREMENT_CM:g}.",
    ),
]


class PredictionRequest(BaseModel):
    """One flower's four measurements."""

    # strict: "5.1" and true are refused rather than coerced; forbid: a typo such as
    # "petal--width" is reported instead of being silently dropped.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
            ]
        },
    )

    sepal_length: Centimetres
    sepal_width: Centimetres
    petal_length: Centimetres
    petal_width: Centimetres

    def as_row(self) -> list[float]:
        return [float(getattr(self, name)) for name in FEATURE_NAMES]


class PredictionResponse(BaseModel):
    predicted_species: str = Field(examples=["Iris-setosa"])
    probabilities: dict[str, float] = Field(
        examples=[{"Iris-setosa": 0.97, "Iris-versicolor": 0.03, "Iris-virginica": 0.0}]
    )
    model_version: str = Field(examples=["1"])
    request_id: str = Field(
        description="The answer's id, made by the server and impossible to guess; quote it to "
        "send feedback on this answer. The X-Request-ID header echoes the client's tracing id "
        "when it sent one, and is this id otherwise.",
        examples=["3f2c9a1e5b7d4e0f9a8b7c6d5e4f3a2b"],
    )


class BatchPredictionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "instances": [
                        {
                            "sepal_length": 5.1,
                            "sepal_width": 3.5,
                            "petal_length": 1.4,
                            "petal_width": 0.2,
                        },
                        {
                            "sepal_length": 6.7,
                            "sepal_width": 3.0,
                            "petal_length": 5.2,
                            "petal_width": 2.3,
                        },
                    ]
                }
            ]
        },
    )

    # The row limit is a predictor setting (MAX_BATCH_ROWS by default), checked there before
    # the body is parsed; min_length only refuses empty batches.
    instances: list[PredictionRequest] = Field(min_length=1)


class BatchPrediction(BaseModel):
    predicted_species: str
    probabilities: dict[str, float]


class BatchPredictionResponse(BaseModel):
    predictions: list[BatchPrediction] = Field(description="In the order of `instances`.")
    model_version: str
    request_id: str = Field(
        description="One id for the whole batch, made by the server (as for one flower); a row "
        "is named by the id and its index in `predictions`."
    )
    feedback_rows: int = Field(
        ge=0,
        description="How many rows, from the first, can take feedback (POST /feedback): at "
        "most PREDICTOR_STORE_MAX_ROWS of a batch are kept, and none when the predictor keeps "
        "no answers.",
    )


class LoadFailure(BaseModel):
    """The alias points at a version that fails to load; the served version stays."""

    version: str
    reason: str
    since: datetime


class ServedModel(BaseModel):
    """What the predictor is serving right now (GET /model)."""

    name: str
    version: str
    alias: str
    run_id: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    data_md5: str | None = None
    created_at: datetime | None = Field(
        default=None, description="When the version was registered (its age counts from here)."
    )
    loaded_at: datetime
    source: str = Field(
        default="registry",
        description="'registry' when loaded from MLflow, "
        "'local-cache' when MLflow was unreachable at start-up.",
    )
    load_error: LoadFailure | None = Field(
        default=None,
        description="Set while the alias points at another version that fails to load.",
    )
    challenger: ServedModel | None = Field(
        default=None,
        description="The `challenger` version, scoring the same inputs in the shadow of this "
        "one (its answers are compared, never returned); absent without a challenger.",
    )
    scorer: str | None = Field(
        default=None,
        description="What scores this version: 'numpy' (the predictor's own arithmetic for a "
        "standardised logistic regression, checked equal to scikit-learn's at load) or "
        "'scikit-learn'.",
        examples=["numpy"],
    )
    scorer_mismatch: str | None = Field(
        default=None,
        description="Set when the numpy scorer was made for this version but its numbers "
        "differ from scikit-learn's: scikit-learn scores it, at about half the throughput.",
    )


# MLflow keeps version numbers in an SQL INTEGER column (SqlModelVersion.version), 32 bits on
# PostgreSQL and MySQL: no model has a larger version, and asking MLflow for one fails in its
# database (a 500 from MLflow). Identifiers MLflow could never hold are refused before it is asked.
MAX_MODEL_VERSION = 2**31 - 1
# MLflow refuses '/' and ':' in a registered model's name; PostgreSQL cannot store a NUL, and no
# name needs a control character.
MODEL_NAME_PATTERN = r"^[^/:\x00-\x1f\x7f]+$"


class PromoteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model_version": "2"}]},
    )

    model_version: str = Field(
        pattern=r"^[1-9][0-9]{0,9}$",
        description="A version number as MLflow writes it (no leading zeros), from 1 to "
        f"{MAX_MODEL_VERSION}.",
    )
    model_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=MODEL_NAME_PATTERN,
        description="Registered model name (no '/', ':' or control characters); the gateway's "
        "default when omitted.",
    )

    @field_validator("model_version")
    @classmethod
    def _one_mlflow_can_hold(cls, value: str) -> str:
        if int(value) > MAX_MODEL_VERSION:
            raise ValueError(f"must be at most {MAX_MODEL_VERSION}, MLflow's largest version")
        return value


class PromoteResponse(BaseModel):
    model_name: str
    model_version: str
    alias: str
    previous_version: str | None
