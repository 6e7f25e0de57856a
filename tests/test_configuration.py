"""Every setting a service reads is documented in .env.example, under the name it reads."""

from __future__ import annotations

import re

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from iris_devstack.processes import REPO_ROOT
from iris_gateway.config import GatewaySettings
from iris_predictor.config import PredictorSettings
from iris_trainer.config import BootstrapSettings, TrainerSettings, WorkerSettings

DOCUMENTED = set(
    re.findall(
        r"^#?\s*([A-Z][A-Z0-9_]*)=", (REPO_ROOT / ".env.example").read_text(), flags=re.MULTILINE
    )
)


def variable_names(settings: type[BaseSettings]) -> list[str]:
    prefix = settings.model_config.get("env_prefix", "")
    names = []
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(str(alias.choices[0]))
        elif isinstance(alias, str):
            names.append(alias)
        else:
            names.append(f"{prefix}{field_name}".upper())
    return names


@pytest.mark.parametrize(
    "settings",
    [TrainerSettings, WorkerSettings, BootstrapSettings, PredictorSettings, GatewaySettings],
)
def test_every_setting_is_documented(settings: type[BaseSettings]) -> None:
    missing = sorted(set(variable_names(settings)) - DOCUMENTED)
    assert not missing, f"{settings.__name__} reads {missing}; document them in .env.example"


def test_no_variable_is_set_twice() -> None:
    # A second line would silently win over the first, with its own comment.
    assigned = re.findall(
        r"^([A-Z][A-Z0-9_]*)=", (REPO_ROOT / ".env.example").read_text(), flags=re.MULTILINE
    )
    twice = sorted({name for name in assigned if assigned.count(name) > 1})
    assert not twice, f".env.example sets {twice} more than once"
