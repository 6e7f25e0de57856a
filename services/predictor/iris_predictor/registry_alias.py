"""The MLflow side: what an alias points at, downloading and loading it, and the local copy.

MLflow's client finds and downloads a version, after its listing shows it within the size
cap; loading it is never MLflow's: `iris_shared.model_files` loads only what meets the serving
contract (skops with this deployment's trusted types, the four measurements, the three
species, a model file inside its folder). A version saved with pickle is refused, never
unpickled. Why a version failed to load is shown in the public GET /model: only the loader's
fixed reasons are, never an exception's text (that goes to the log).

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
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from iris_predictor.inference import IncompatibleModelError, LoadedModel
from iris_shared.drift import REFERENCE_PROFILE_ARTIFACT, ReferenceProfile
from iris_shared.model_files import UnsafeModelError, check_listed_size, load_model_files
from iris_shared.registry import NOT_FOUND_ERRORS, VersionTag
from iris_shared.schemas import ServedModel

logger = logging.getLogger(__name__)

_METADATA_FILE = "served.json"


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
    if isinstance(exc, MlflowException | OSError):
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
        probe_timeout_s: float = 2.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.probe_timeout_s = probe_timeout_s
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{name}@{alias}")
        self.cache_dir = cache_dir / safe
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def _probe(self) -> None:
        """Fail fast when the server is down: MLflow's client retries for minutes by default."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        url = f"{self.tracking_uri.rstrip('/')}/health"
        try:
            # The scheme is checked above; the URL comes from settings, never from a client.
            with urllib.request.urlopen(url, timeout=self.probe_timeout_s):  # noqa: S310
                pass
        except urllib.error.HTTPError:
            return  # it answered: reachable, whatever it thinks of /health
        except (OSError, ValueError) as exc:
            raise RegistryUnavailableError(f"MLflow at {self.tracking_uri} is unreachable") from exc

    def resolve(self) -> VersionRef | None:
        """The version behind the alias, or None when the alias (or the model) does not exist."""
        self._probe()
        try:
            version = self._client.get_model_version_by_alias(self.name, self.alias)
        except RestException as exc:
            if exc.error_code in NOT_FOUND_ERRORS:
                return None
            raise RegistryUnavailableError(f"MLflow refused {self.uri}: {exc}") from exc
        except MlflowException as exc:
            raise RegistryUnavailableError(f"MLflow failed to resolve {self.uri}") from exc
        tags = dict(version.tags or {})
        created = version.creation_timestamp
        return VersionRef(
            name=self.name,
            alias=self.alias,
            version=str(version.version),
            run_id=version.run_id,
            data_md5=tags.get(VersionTag.DATA_MD5),
            created_at=datetime.fromtimestamp(created / 1000, UTC) if created else None,
        )

    def _profile(self, run_id: str | None, target: Path) -> Path | None:
        """Download the training data's reference profile; None when the run has none."""
        if not run_id:
            return None
        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=REFERENCE_PROFILE_ARTIFACT,
                    dst_path=str(target),
                    tracking_uri=self.tracking_uri,
                )
            )
        except Exception:
            # Versions trained before profiles existed: served all the same, without drift.
            logger.warning("No reference profile for drift scores", extra={"run_id": run_id})
            return None

    def _metrics(self, run_id: str | None) -> dict[str, float]:
        if not run_id:
            return {}
        try:
            return {k: float(v) for k, v in self._client.get_run(run_id).data.metrics.items()}
        except MlflowException:
            logger.warning("Unable to read run metrics", extra={"run_id": run_id})
            return {}

    def load(self, ref: VersionRef) -> LoadedModel:
        """Download and load `ref` completely, then make it the local copy."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        folder = f"v{ref.version}-{uuid.uuid4().hex[:8]}"
        target = self.cache_dir / folder
        uri = f"models:/{ref.name}/{ref.version}"
        try:
            files = get_artifact_repository(
                uri, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
            check_listed_size(files.list_artifacts)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri,
                dst_path=str(target),
                tracking_uri=self.tracking_uri,
                registry_uri=self.tracking_uri,
            )
            info = ServedModel(
                name=ref.name,
                version=ref.version,
                alias=ref.alias,
                run_id=ref.run_id,
                metrics=self._metrics(ref.run_id),
                data_md5=ref.data_md5,
                created_at=ref.created_at,
                loaded_at=datetime.now(UTC),
                source="registry",
            )
            profile_path = self._profile(ref.run_id, target)
            loaded = LoadedModel(
                model=load_model_files(Path(local)),
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
            Path(local).relative_to(self.cache_dir),
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
