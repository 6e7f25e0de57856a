"""The MLflow Model Registry side: aliases, the promotion gate, and reading versions back.

Aliases carry the lifecycle: `production` is what the predictor serves, `challenger` is a
newer version that passed the gate and waits for a deliberate promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException

PRODUCTION = "production"
CHALLENGER = "challenger"


class UnknownModelVersionError(Exception):
    """The registered model or the version does not exist."""


@dataclass(frozen=True)
class GateDecision:
    outcome: str  # first_version | passed | failed
    reason: str
    aliases: list[str]
    production_version: str | None
    production_score: float | None


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind an alias, or None when the alias (or the model) does not exist yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except RestException as exc:
        # MLflow answers a missing alias with 400 INVALID_PARAMETER_VALUE, not 404.
        if exc.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def decide(
    *,
    candidate_score: float,
    production_score: float | None,
    production_version: str | None,
    metric: str,
    tolerance: float,
    floor: float,
) -> GateDecision:
    """The promotion policy, free of I/O so it can be read (and tested) on its own."""
    if production_version is None or production_score is None:
        return GateDecision(
            "first_version",
            f"no version had alias '{PRODUCTION}'; this one serves at once",
            [PRODUCTION],
            None,
            None,
        )
    if candidate_score < floor:
        return GateDecision(
            "failed",
            f"{metric} {candidate_score:.4f} is below the floor {floor:.4f}",
            [],
            production_version,
            production_score,
        )
    if candidate_score < production_score - tolerance:
        return GateDecision(
            "failed",
            f"{metric} {candidate_score:.4f} is worse than production v{production_version} "
            f"({production_score:.4f}) by more than the tolerance {tolerance:.4f}",
            [],
            production_version,
            production_score,
        )
    return GateDecision(
        "passed",
        f"{metric} {candidate_score:.4f} vs production v{production_version} "
        f"{production_score:.4f} (tolerance {tolerance:.4f}, floor {floor:.4f})",
        [CHALLENGER],
        production_version,
        production_score,
    )


def load_version(name: str, version: str) -> Any:
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def set_aliases(client: MlflowClient, name: str, version: str, aliases: list[str]) -> None:
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)


def promote(client: MlflowClient, name: str, version: str) -> str | None:
    """Point `production` at `version`; returns the version it pointed at before."""
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise UnknownModelVersionError(f"{name} has no version {version}") from exc
    previous = version_by_alias(client, name, PRODUCTION)
    client.set_registered_model_alias(name, PRODUCTION, version)
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is not None and challenger.version == version:
        # The challenger won; leaving the alias would advertise a contest that is over.
        client.delete_registered_model_alias(name, CHALLENGER)
    return previous.version if previous is not None else None


@dataclass(frozen=True)
class VersionSummary:
    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    metrics: dict[str, float]
    tags: dict[str, str]
    created_at_ms: int


def list_versions(client: MlflowClient, names: list[str] | None = None) -> list[VersionSummary]:
    registered = [m.name for m in client.search_registered_models()] if names is None else names
    summaries: list[VersionSummary] = []
    for name in registered:
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except MlflowException:
            continue
        # Aliases are read from the registered model: version search results may omit them.
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        for mv in sorted(versions, key=lambda v: int(v.version)):
            metrics: dict[str, float] = {}
            if mv.run_id:
                try:
                    metrics = dict(client.get_run(mv.run_id).data.metrics)
                except MlflowException:
                    metrics = {}
            summaries.append(
                VersionSummary(
                    name=name,
                    version=str(mv.version),
                    aliases=sorted(aliases_by_version.get(str(mv.version), [])),
                    run_id=mv.run_id,
                    metrics=metrics,
                    tags=dict(mv.tags or {}),
                    created_at_ms=int(mv.creation_timestamp or 0),
                )
            )
    return summaries
