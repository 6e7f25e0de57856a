"""MLflow's REST API, for the few calls the predictor makes.

Where an alias points, a run (its metrics and its artefact folder), where a version's files
are, and those files through the tracking server's artefact proxy (`mlflow-artifacts:`, as
`mlflow server --serve-artifacts` stores them). MLflow's Python client would make the same
requests, but importing it costs every worker process about 30 MiB and half a second of CPU at
start; the gateway talks to the same API for the same reason (`iris_gateway.promotion`).

Credentials, TLS and retries are read from MLflow's own environment variables, so that one
configuration serves both: `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD` (basic
auth), or `MLFLOW_TRACKING_TOKEN` (bearer); `MLFLOW_TRACKING_INSECURE_TLS`,
`MLFLOW_TRACKING_SERVER_CERT_PATH` and `MLFLOW_TRACKING_CLIENT_CERT_PATH`;
`MLFLOW_HTTP_REQUEST_TIMEOUT`, `MLFLOW_HTTP_REQUEST_MAX_RETRIES` and
`MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`.

Files stored where the tracking server does not proxy them (an `s3://` artefact root without
`--serve-artifacts`, say) are listed and downloaded by MLflow's own artefact repositories,
imported only then (`RepositoryFolder`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import orjson
import urllib3

from iris_shared.registry import MLFLOW_API, MLFLOW_ARTIFACTS_API, PROXIED_ARTIFACTS_SCHEME

# Statuses MLflow's client retries too: the server is busy or restarting.
_RETRIED_STATUSES = (429, 500, 502, 503, 504)
_CHUNK_BYTES = 1 << 20


class MlflowUnreachableError(Exception):
    """MLflow could not be reached, or failed (5xx) to answer."""


class MlflowRefusedError(Exception):
    """MLflow answered a 4xx: the request names something missing, or may not be made."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.error_code = str(body.get("error_code", ""))
        super().__init__(f"MLflow answered {status} {self.error_code}: {body.get('message', '')}")


@dataclass(frozen=True)
class ArtifactEntry:
    """One entry of a folder's listing; `path` is relative to the folder listed first."""

    path: str
    is_dir: bool
    file_size: int | None


class ArtifactFolder(Protocol):
    """A version's (or a run's) folder of files, wherever it is stored."""

    def list(self, path: str) -> list[ArtifactEntry]: ...

    def download(self, path: str, destination: Path, max_bytes: int | None = None) -> Path: ...


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def _safe_relative(path: str) -> str:
    """`path` if it stays inside the folder it is joined to (a server's listing is not
    trusted to); MLflow's client checks the same."""
    parts = path.split("/")
    if not path or "\\" in path or "#" in path or path.startswith("/") or ".." in parts:
        raise MlflowRefusedError(400, {"message": f"unsafe artefact path {path!r}"})
    return path


class MlflowRest:
    """GET requests to one MLflow tracking server, with MLflow's client settings."""

    def __init__(self, tracking_uri: str, *, connect_timeout_s: float) -> None:
        if urlsplit(tracking_uri).scheme not in {"http", "https"}:
            raise ValueError(
                f"The predictor needs an MLflow server (http or https), not {tracking_uri!r}"
            )
        self.base_url = tracking_uri.rstrip("/")
        self._scheme = urlsplit(tracking_uri).scheme
        read_timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120"))
        self._timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout)
        # No retry on a refused or timed-out connection: an MLflow that is down is reported
        # at once, and the next check tries again.
        self._retries = urllib3.Retry(
            total=int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")),
            connect=0,
            backoff_factor=float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")),
            status_forcelist=_RETRIED_STATUSES,
            allowed_methods={"GET"},
            raise_on_status=False,
        )
        self._headers = self._auth_headers()
        self._pool = urllib3.PoolManager(
            maxsize=2,
            cert_reqs="CERT_NONE" if _flag("MLFLOW_TRACKING_INSECURE_TLS") else "CERT_REQUIRED",
            ca_certs=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None,
            cert_file=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None,
        )

    @staticmethod
    def _auth_headers() -> dict[str, str]:
        # MLflow's precedence: a username and password first, then a token.
        username = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if username and password:
            return dict(urllib3.make_headers(basic_auth=f"{username}:{password}"))
        if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
            return {"Authorization": f"Bearer {token}"}
        return {}

    def get(
        self, url: str, params: Mapping[str, str] | None = None, *, stream: bool = False
    ) -> urllib3.BaseHTTPResponse:
        try:
            response = self._pool.request(
                "GET",
                url,
                fields=params,
                headers=self._headers,
                timeout=self._timeout,
                retries=self._retries,
                preload_content=not stream,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise MlflowUnreachableError(f"MLflow at {self.base_url} is unreachable") from exc
        if response.status >= 500:
            response.drain_conn()
            raise MlflowUnreachableError(f"MLflow at {self.base_url} answered {response.status}")
        if response.status != 200:
            body = response.data if not stream else response.read()
            raise MlflowRefusedError(response.status, _json_object(body))
        return response

    def get_json(self, path: str, **params: str) -> dict[str, Any]:
        """`GET <tracking uri>/api/2.0/mlflow<path>?<params>`'s JSON object."""
        return _json_object(self.get(f"{self.base_url}{MLFLOW_API}{path}", params).data)

    def version_by_alias(self, name: str, alias: str) -> dict[str, Any]:
        return dict(
            self.get_json("/registered-models/alias", name=name, alias=alias)["model_version"]
        )

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.get_json("/runs/get", run_id=run_id)["run"])

    def version_files_uri(self, name: str, version: str) -> str:
        """Where the version's files are (its logged model's folder, for MLflow 3 versions)."""
        body = self.get_json("/model-versions/get-download-uri", name=name, version=version)
        return str(body["artifact_uri"])

    def folder(self, artifact_uri: str) -> ArtifactFolder:
        """The files under `artifact_uri`: through the tracking server's proxy when it serves
        them, else through MLflow's artefact repository for that store."""
        parsed = urlsplit(artifact_uri)
        if parsed.scheme != PROXIED_ARTIFACTS_SCHEME:
            return RepositoryFolder(artifact_uri)
        base = f"{self._scheme}://{parsed.netloc}" if parsed.netloc else self.base_url
        return ProxiedFolder(self, f"{base}{MLFLOW_ARTIFACTS_API}", parsed.path.strip("/"))


class ProxiedFolder:
    """A folder served by `mlflow server --serve-artifacts`."""

    def __init__(self, rest: MlflowRest, endpoint: str, root: str) -> None:
        self.rest = rest
        self.endpoint = endpoint
        self.root = root

    def list(self, path: str) -> list[ArtifactEntry]:
        folder = posixpath.join(self.root, path) if path else self.root
        listing = _json_object(self.rest.get(self.endpoint, {"path": folder}).data)
        return [
            ArtifactEntry(
                path=posixpath.join(path, _safe_relative(str(entry["path"]))),
                is_dir=bool(entry.get("is_dir")),
                file_size=int(entry["file_size"]) if entry.get("file_size") is not None else None,
            )
            for entry in listing.get("files", [])
        ]

    def download(self, path: str, destination: Path, max_bytes: int | None = None) -> Path:
        """The file `path` written to `destination / path`; refused past `max_bytes` (its
        listed size), so a server cannot send more than it listed."""
        target = destination / _safe_relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remote = quote(posixpath.join(self.root, path))
        response = self.rest.get(f"{self.endpoint}/{remote}", stream=True)
        written = 0
        try:
            with target.open("wb") as file:
                for chunk in response.stream(_CHUNK_BYTES):
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise MlflowRefusedError(
                            200, {"message": f"{path} is larger than its listed {max_bytes} bytes"}
                        )
                    file.write(chunk)
        except urllib3.exceptions.HTTPError as exc:
            raise MlflowUnreachableError(f"The download of {path} failed") from exc
        finally:
            response.release_conn()
        return target


class RepositoryFolder:
    """A folder in a store the tracking server does not proxy, through MLflow's client."""

    def __init__(self, artifact_uri: str) -> None:
        # Imported only here: most deployments proxy artefacts and never pay for it.
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        self._repository = get_artifact_repository(artifact_uri)

    def list(self, path: str) -> list[ArtifactEntry]:
        return [
            ArtifactEntry(entry.path, entry.is_dir, entry.file_size)
            for entry in self._repository.list_artifacts(path or None)
        ]

    def download(self, path: str, destination: Path, max_bytes: int | None = None) -> Path:
        local = self._repository.download_artifacts(path, dst_path=str(destination))  # type: ignore[no-untyped-call]
        return Path(local)


def download_listed(
    folder: ArtifactFolder, entries: Iterable[ArtifactEntry], destination: Path
) -> Path:
    """Every file of `entries` (a listing of `folder`, sub-folders included) in `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        if not entry.is_dir:
            folder.download(entry.path, destination, entry.file_size)
    return destination


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
