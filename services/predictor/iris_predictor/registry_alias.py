"""The MLflow side: what an alias points at, downloading and loading it, and the local copy.

MLflow's REST API (`mlflow_rest`) finds and downloads a version, after its listing shows it
within the size cap; loading it is never MLflow's: `iris_shared.model_files` loads only what
meets the serving contract (skops with this deployment's trusted types, the four
measurements, the three species, a model file inside its folder). A version saved with pickle
is refused, never unpickled. Why a version failed to load is shown in the public GET /model:
only the loader's fixed reasons are, never an exception's text (that goes to the log).

The local copy (`<cache_dir>/<name>@<alias>/`) holds the last loaded model's directory and
`served.json` describing it; it lets a predictor that starts while MLflow is down serve the
model it served before instead of nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iris_predictor.inference import IncompatibleModelError, LoadedModel
from iris_predictor.mlflow_rest import (
    ArtifactEntry,
    MlflowRefusedError,
    MlflowRest,
    MlflowUnreachableError,
    download_listed,
)
from iris_shared.drift import REFERENCE_PROFILE_ARTIFACT, ReferenceProfile
from iris_shared.model_files import UnsafeModelError, check_listed_size, load_model_files
from iris_shared.registry import NOT_FOUND_ERRORS, VersionTag
from iris_shared.schemas import ServedModel

logger = logging.getLogger(__name__)

_METADATA_FILE = "served.json"
# A reference profile is a few kilobytes of numbers per feature; nothing larger is read.
PROFILE_MAX_BYTES = 1 << 20


class RegistryUnavailableError(Exception):
    """MLflow could not be reached, or failed to answer."""


class ModelLoadError(Exception):
    """A registered version could not be downloaded or loaded; the message is safe to show."""


def _safe_reason(exc: Exception) -> str:
    """Why a load failed, in words fit for the public GET /model (the details are logged)."""
    if isinstance(exc, UnsafeModelError):
        return exc.reason
    if isinstance(exc, IncompatibleModelError):
        return "it does not take the four measurements in order"
    if isinstance(exc, MlflowRefusedError | MlflowUnreachableError | OSError):
        return "its files could not be fetched from MLflow"
    return "it could not be loaded (see the predictor's log)"


def _read_profile(path: Path | None) -> ReferenceProfile | None:
    if path is None:
        return None
    try:
        return ReferenceProfile.model_validate_json(path.read_text())
    except (OSError, ValueError):
        logger.warning("Unreadable reference profile; no drift scores", extra={"path": str(path)})
        return None


def _kept(listing: list[ArtifactEntry], entries: Iterable[ArtifactEntry]) -> list[ArtifactEntry]:
    """`entries`, also added to `listing`: the size check's listing is the one downloaded."""
    entries = list(entries)
    listing.extend(entries)
    return entries


@dataclass(frozen=True)
class VersionRef:
    name: str
    alias: str
    version: str
    run_id: str | None
    data_md5: str | None
    created_at: datetime | None = None


class RegistryAlias:
    """`models:/<name>@<alias>` on one MLflow server: the version it names, that version
    loaded, and the local copy of the last one loaded."""

    def __init__(
        self,
        tracking_uri: str,
        name: str,
        alias: str,
        cache_dir: Path,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}@{alias}")
        self.cache_dir = cache_dir / safe
        # A refused or unanswered connection fails within `connect_timeout_s`: an MLflow that
        # is down is noticed at once, not after the client's retries.
        self._mlflow = MlflowRest(tracking_uri, connect_timeout_s=connect_timeout_s)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def resolve(self) -> VersionRef | None:
        """The version behind the alias, or None when the alias (or the model) does not exist."""
        try:
            version = self._mlflow.version_by_alias(self.name, self.alias)
        except MlflowRefusedError as exc:
            if exc.error_code in NOT_FOUND_ERRORS:
                return None
            raise RegistryUnavailableError(f"MLflow refused {self.uri}: {exc}") from exc
        except (MlflowUnreachableError, KeyError, TypeError) as exc:
            raise RegistryUnavailableError(f"MLflow failed to resolve {self.uri}") from exc
        tags = {tag["key"]: tag["value"] for tag in version.get("tags") or []}
        created = version.get("creation_timestamp")
        return VersionRef(
            name=self.name,
            alias=self.alias,
            version=str(version["version"]),
            run_id=version.get("run_id") or None,
            data_md5=tags.get(VersionTag.DATA_MD5),
            created_at=datetime.fromtimestamp(int(created) / 1000, UTC) if created else None,
        )

    def _run(self, run_id: str | None) -> dict[str, Any]:
        """The run's metrics and artefact folder; empty when unknown or unreadable (versions
        are served all the same)."""
        if not run_id:
            return {}
        try:
            return self._mlflow.run(run_id)
        except (MlflowRefusedError, MlflowUnreachableError, KeyError):
            logger.warning("Unable to read the version's run", extra={"run_id": run_id})
            return {}

    def _profile(self, run: dict[str, Any], target: Path) -> Path | None:
        """Download the training data's reference profile; None when the run has none."""
        artifact_uri = (run.get("info") or {}).get("artifact_uri")
        if not artifact_uri:
            return None
        try:
            folder = self._mlflow.folder(str(artifact_uri))
            return folder.download(REFERENCE_PROFILE_ARTIFACT, target, PROFILE_MAX_BYTES)
        except Exception:
            # Versions trained before profiles existed: served all the same, without drift.
            logger.warning("No reference profile for drift scores", exc_info=True)
            return None

    def load(self, ref: VersionRef) -> LoadedModel:
        """Download and load `ref` completely, then make it the local copy."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / f"v{ref.version}-{uuid.uuid4().hex[:8]}"
        try:
            files = self._mlflow.folder(self._mlflow.version_files_uri(ref.name, ref.version))
            listing: list[ArtifactEntry] = []
            check_listed_size(lambda path: _kept(listing, files.list(path)))
            local = download_listed(files, listing, target)
            run = self._run(ref.run_id)
            info = ServedModel(
                name=ref.name,
                version=ref.version,
                alias=ref.alias,
                run_id=ref.run_id,
                metrics={
                    str(metric["key"]): float(metric["value"])
                    for metric in (run.get("data") or {}).get("metrics") or []
                },
                data_md5=ref.data_md5,
                created_at=ref.created_at,
                loaded_at=datetime.now(UTC),
                source="registry",
            )
            profile_path = self._profile(run, target)
            loaded = LoadedModel(
                model=load_model_files(local),
                info=info,
                profile=_read_profile(profile_path),
            )
        except Exception as exc:
            # MLflow, network, disk, refused files or shape errors alike: the caller keeps the
            # old model, and logs this exception (chained) with its traceback.
            shutil.rmtree(target, ignore_errors=True)
            raise ModelLoadError(
                f"Unable to load {ref.name} version {ref.version}: {_safe_reason(exc)}"
            ) from exc
        self._remember(
            info,
            local.relative_to(self.cache_dir),
            profile_path.relative_to(self.cache_dir) if profile_path is not None else None,
        )
        return loaded

    def _remember(self, info: ServedModel, model_dir: Path, profile: Path | None) -> None:
        metadata = {
            "model_dir": str(model_dir),
            "profile": str(profile) if profile is not None else None,
            "served": info.model_dump(mode="json"),
        }
        tmp = self.cache_dir / f".{_METADATA_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(metadata, indent=2))
        # os.replace is atomic: a crash leaves the old or the new description, never half.
        os.replace(tmp, self.cache_dir / _METADATA_FILE)
        # Other copies of this version may belong to another worker process loading it right
        # now; copies of other versions are stale.
        current = f"v{info.version}-"
        for child in self.cache_dir.iterdir():
            if child.is_dir() and not child.name.startswith(current):
                shutil.rmtree(child, ignore_errors=True)

    def load_cached(self) -> LoadedModel | None:
        """The local copy of the last loaded model, or None when there is none (or it is broken)."""
        metadata_path = self.cache_dir / _METADATA_FILE
        if not metadata_path.exists():
            return None
        try:
            metadata = json.loads(metadata_path.read_text())
            info = ServedModel.model_validate(metadata["served"])
            info = info.model_copy(update={"source": "local-cache", "loaded_at": datetime.now(UTC)})
            model = load_model_files(self.cache_dir / metadata["model_dir"])
            profile = metadata.get("profile")
            return LoadedModel(
                model=model,
                info=info,
                profile=_read_profile(self.cache_dir / profile if profile else None),
            )
        except Exception:
            logger.exception("Unable to load the local copy of the model")
            return None
