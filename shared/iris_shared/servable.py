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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from iris_shared.schemas import FEATURE_NAMES

SKOPS = "skops"
# A fitted decision tree (inside every random forest) is a Cython object skops does not trust
# by default.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)


def servability_problems(mlmodel: Mapping[str, Any]) -> list[str]:
    """Why a version with this MLmodel cannot be served; empty when it can."""
    problems = []
    sklearn = (mlmodel.get("flavors") or {}).get("sklearn")
    if not isinstance(sklearn, Mapping):
        problems.append("it has no sklearn flavour")
    elif sklearn.get("serialization_format") != SKOPS:
        problems.append(
            f"it is saved as {sklearn.get('serialization_format')!r}, not 'skops' "
            "(pickle formats can run code when loaded)"
        )
    inputs = _signature_inputs(mlmodel)
    expected = [{"name": name, "type": "double"} for name in FEATURE_NAMES]
    if inputs is None:
        problems.append("it has no input signature")
    elif [{"name": i.get("name"), "type": i.get("type")} for i in inputs] != expected:
        names = [i.get("name") for i in inputs]
        problems.append(
            f"its signature takes {names}, not the four measurements {list(FEATURE_NAMES)} "
            "as doubles"
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
