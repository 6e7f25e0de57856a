"""The Model Registry vocabulary every service agrees on.

The registered model names, the aliases that carry a version's lifecycle, the error codes
MLflow answers when an alias or a model is missing, and the keys of the tags the trainer
writes on every run and model version. Plain strings: the gateway talks to MLflow's REST API
and must not need the MLflow client to know them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

LOGISTIC_REGRESSION: Final = "Iris-LogisticRegression"
RANDOM_FOREST: Final = "Iris-RandomForest"
REGISTERED_MODELS: Final = (LOGISTIC_REGRESSION, RANDOM_FOREST)
# The model the predictor serves and `promote` moves when no name is given.
DEFAULT_MODEL: Final = LOGISTIC_REGRESSION

# `production` is what the predictor serves; `challenger` is a newer version that passed the
# gate and waits for a deliberate promotion.
PRODUCTION: Final = "production"
CHALLENGER: Final = "challenger"

# MLflow answers a missing alias with 400 INVALID_PARAMETER_VALUE (not 404), and a missing
# registered model or version with 404 RESOURCE_DOES_NOT_EXIST.
MISSING_ALIAS_ERROR: Final = "INVALID_PARAMETER_VALUE"
MISSING_ALIAS_HTTP_STATUS: Final = 400
MISSING_MODEL_ERROR: Final = "RESOURCE_DOES_NOT_EXIST"
MISSING_MODEL_HTTP_STATUS: Final = 404
NOT_FOUND_ERRORS: Final = frozenset({MISSING_ALIAS_ERROR, MISSING_MODEL_ERROR})

# MLflow's REST API, as the services call it without MLflow's client: the tracking and registry
# routes, and the artefact proxy of `mlflow server --serve-artifacts`, which stores files under
# `mlflow-artifacts:/<path>` URIs.
MLFLOW_API: Final = "/api/2.0/mlflow"
MLFLOW_ARTIFACTS_API: Final = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED_ARTIFACTS_SCHEME: Final = "mlflow-artifacts"


class VersionTag(StrEnum):
    """Keys of the tags the trainer writes on each run and model version."""

    DATA_MD5 = "data_md5"
    DATA_ROWS = "data_rows"
    DATA_SOURCE = "data_source"
    # "false" when the working copy differs from what `dvc add` recorded.
    DATA_DVC_TRACKED = "data_dvc_tracked"
    GIT_COMMIT = "git_commit"
    PARAMS_HASH = "params_hash"
    # The retrain job (Celery task id) that registered the version; absent for CLI training.
    JOB_ID = "job_id"
    GATE_OUTCOME = "gate.outcome"
    GATE_REASON = "gate.reason"
    GATE_COMPARED_WITH = "gate.compared_with"


# What ties a version to the exact data, code and parameters it was trained on.
LINEAGE_TAGS: Final = frozenset(
    {
        VersionTag.DATA_MD5,
        VersionTag.DATA_ROWS,
        VersionTag.DATA_SOURCE,
        VersionTag.DATA_DVC_TRACKED,
        VersionTag.GIT_COMMIT,
        VersionTag.PARAMS_HASH,
    }
)


class GateOutcome(StrEnum):
    """Values of the `gate.outcome` tag."""

    FIRST_VERSION = "first_version"
    PASSED = "passed"
    FAILED = "failed"
