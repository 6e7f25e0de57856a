"""What a registered model version must be for the predictor to serve it.

The contract between the trainer (which logs versions), the gateway (which refuses to promote
one that breaks it) and the predictor (which refuses to load one). It reads the version's
`MLmodel` file, parsed as YAML:

- the `sklearn` flavour, saved in the skops format: pickle and cloudpickle run code while
  loading, so they are never loaded, whatever MLflow allows;
- a signature whose inputs are the four measurements, as doubles, in `FEATURE_NAMES` order
  (the order the predictor builds its arrays in).

skops loads only the types it trusts. Which types to trust is this deployment's decision, not
the model file's (MLflow reads an allow-list from the MLmodel file, which a crafted model can
extend): `SKOPS_TRUSTED_TYPES` is the list, beyond skops' own defaults, that the project's
candidate models need.

MLflow's own loaders are switched off in every service process (`forbid_unpickling`, called
first thing by each entry point): a slip that reached one would be refused, not run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from iris_shared.schemas import FEATURE_NAMES

SKOPS = "skops"
# Formats MLflow's sklearn flavour knows; a name outside them is never repeated back.
_PICKLE_FORMATS = ("pickle", "cloudpickle")
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
# A fitted decision tree (inside every random forest) is a Cython object skops does not trust
# by default.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)


def forbid_unpickling() -> None:
    """Make every MLflow model loader refuse to run in this process and the ones it starts.

    MLflow 3.17.2 reads the switch at each load, not at import
    (`mlflow.environment_variables.MLFLOW_ALLOW_PICKLE_DESERIALIZATION`, default true), and
    `mlflow.sklearn._load_model_from_local_file` raises "Deserializing this model is
    disallowed" unless it is true, for every serialization format, skops included (its
    allow-list comes from the MLmodel file). So, set before MLflow is imported, no loader of
    MLflow's ever deserializes a model here; the services load models with
    `iris_shared.model_files` only.
    """
    os.environ[PICKLE_SWITCH] = "false"


def servability_problems(mlmodel: Mapping[str, Any]) -> list[str]:
    """Why a version with this MLmodel cannot be served; empty when it can.

    Safe to show anyone: no value of the file is repeated unless it is one this module knows.
    """
    problems = []
    sklearn = (mlmodel.get("flavors") or {}).get("sklearn")
    if not isinstance(sklearn, Mapping):
        problems.append("it has no sklearn flavour")
    elif (saved_as := sklearn.get("serialization_format")) != SKOPS:
        named = repr(saved_as) if saved_as in _PICKLE_FORMATS else "an unknown format"
        problems.append(
            f"it is saved as {named}, not 'skops' (pickle formats can run code when loaded)"
        )
    inputs = _signature_inputs(mlmodel)
    expected = [{"name": name, "type": "double"} for name in FEATURE_NAMES]
    if inputs is None:
        problems.append("it has no input signature")
    elif [{"name": i.get("name"), "type": i.get("type")} for i in inputs] != expected:
        problems.append(
            f"its signature does not take the four measurements {list(FEATURE_NAMES)} "
            "as doubles, in that order"
        )
    return problems


def _signature_inputs(mlmodel: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    signature = mlmodel.get("signature")
    if not isinstance(signature, Mapping) or not signature.get("inputs"):
        return None
    try:
        inputs = json.loads(signature["inputs"])
    except (TypeError, ValueError):
        return None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return None
    return inputs
