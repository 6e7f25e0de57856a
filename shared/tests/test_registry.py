"""The registry vocabulary, and the promise that iris_shared needs neither MLflow nor Celery."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import iris_shared
from iris_shared.registry import (
    DEFAULT_MODEL,
    LINEAGE_TAGS,
    MISSING_ALIAS_ERROR,
    MISSING_MODEL_ERROR,
    NOT_FOUND_ERRORS,
    REGISTERED_MODELS,
    VersionTag,
)

SHARED_MODULES = sorted(Path(iris_shared.__file__).parent.glob("*.py"))


def test_the_default_model_is_one_the_trainer_registers() -> None:
    assert DEFAULT_MODEL in REGISTERED_MODELS
    assert len(set(REGISTERED_MODELS)) == len(REGISTERED_MODELS)


def test_a_missing_alias_and_a_missing_model_both_read_as_not_found() -> None:
    assert {MISSING_ALIAS_ERROR, MISSING_MODEL_ERROR} == NOT_FOUND_ERRORS


def test_lineage_tags_are_version_tags_and_the_gate_is_not_lineage() -> None:
    assert set(VersionTag) > LINEAGE_TAGS
    assert VersionTag.GATE_OUTCOME not in LINEAGE_TAGS
    assert VersionTag.DATA_MD5 == "data_md5"


@pytest.mark.parametrize("module", SHARED_MODULES, ids=lambda path: path.name)
def test_shared_code_imports_no_ml_or_worker_library(module: Path) -> None:
    # The gateway installs iris_shared without MLflow, scikit-learn or the trainer.
    forbidden = {"mlflow", "sklearn", "pandas", "iris_trainer", "iris_predictor", "iris_gateway"}
    imported: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])

    assert not imported & forbidden
