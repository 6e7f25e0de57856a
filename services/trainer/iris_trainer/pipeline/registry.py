"""The MLflow Model Registry side: registration, the promotion gate, reading versions back.

Aliases carry the lifecycle (iris_shared.registry): the gate gives a new version `challenger`,
or `production` when the model has none yet. Moving `production` afterwards is a deliberate
act that goes through the gateway's POST /promote, never through this module.

A version is read back (to score production's at the gate) with `iris_shared.model_files`,
never with MLflow's loaders, which unpickle whatever the registry holds.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from iris_shared.model_files import check_listed_size, load_model_files
from iris_shared.registry import CHALLENGER, NOT_FOUND_ERRORS, PRODUCTION, GateOutcome, VersionTag

# Longest wait for a new version to become READY (the server may copy artefacts first).
REGISTRATION_TIMEOUT_S = 300
# Job ids go into a search filter between quotes; Celery's are UUIDs.
_SAFE_JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


# The aliases each gate outcome gives the new version.
_GATE_ALIASES = {
    GateOutcome.FIRST_VERSION: (PRODUCTION,),
    GateOutcome.PASSED: (CHALLENGER,),
    GateOutcome.FAILED: (),
}


@dataclass(frozen=True)
class GateDecision:
    outcome: GateOutcome
    reason: str
    production_version: str | None
    production_score: float | None

    @property
    def aliases(self) -> list[str]:
        return list(_GATE_ALIASES[self.outcome])


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind an alias, or None when the alias (or the model) does not exist yet."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except RestException as exc:
        if exc.error_code in NOT_FOUND_ERRORS:
            return None
        raise


def register_version(
    client: MlflowClient,
    name: str,
    *,
    model_uri: str,
    model_id: str | None,
    run_id: str,
    tags: Mapping[str, str],
) -> ModelVersion:
    """Create a version of `name` from a logged model, with its tags, and wait until READY.

    The tags travel in the creating call, so no version ever exists without its lineage
    (tagging afterwards left untagged versions behind when a tag call failed).
    """
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return client.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags=dict(tags),
        model_id=model_id,
        await_creation_for=REGISTRATION_TIMEOUT_S,
    )


def version_for_job(client: MlflowClient, name: str, job_id: str) -> ModelVersion | None:
    """The version of `name` a retrain job already registered, if any.

    A job runs again after a retry or a redelivery; finding its version first is what keeps
    one job from ever registering two.
    """
    if not _SAFE_JOB_ID.match(job_id):
        raise ValueError(f"job id {job_id!r} cannot be searched for")
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{VersionTag.JOB_ID}` = '{job_id}'"
    )
    return min(found, key=lambda v: int(v.version), default=None)


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
            GateOutcome.FIRST_VERSION,
            f"no version had alias '{PRODUCTION}'; this one serves at once",
            None,
            None,
        )
    if candidate_score < floor:
        return GateDecision(
            GateOutcome.FAILED,
            f"{metric} {candidate_score:.4f} is below the floor {floor:.4f}",
            production_version,
            production_score,
        )
    if candidate_score < production_score - tolerance:
        return GateDecision(
            GateOutcome.FAILED,
            f"{metric} {candidate_score:.4f} is worse than production v{production_version} "
            f"({production_score:.4f}) by more than the tolerance {tolerance:.4f}",
            production_version,
            production_score,
        )
    return GateDecision(
        GateOutcome.PASSED,
        f"{metric} {candidate_score:.4f} vs production v{production_version} "
        f"{production_score:.4f} (tolerance {tolerance:.4f}, floor {floor:.4f})",
        production_version,
        production_score,
    )


def recorded_decision(version: ModelVersion) -> GateDecision | None:
    """The gate's decision on `version` if it was recorded (by an earlier attempt of a job)."""
    tags = version.tags or {}
    outcome = tags.get(VersionTag.GATE_OUTCOME)
    if outcome is None:
        return None
    return GateDecision(
        GateOutcome(outcome),
        tags.get(VersionTag.GATE_REASON, ""),
        tags.get(VersionTag.GATE_COMPARED_WITH),
        None,
    )


def load_version(name: str, version: str) -> Any:
    """The fitted estimator of a version, from the tracking server `mlflow` is set to.

    Raises `iris_shared.model_files.UnsafeModelError` when its files cannot be loaded safely
    (pickled, too big, a path leading out, other classes): nothing of them is run.
    """
    uri = f"models:/{name}/{version}"
    check_listed_size(get_artifact_repository(uri).list_artifacts)
    with tempfile.TemporaryDirectory(prefix="iris-version-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder)
        return load_model_files(Path(local))


def set_aliases(client: MlflowClient, name: str, version: str, aliases: list[str]) -> None:
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)


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
