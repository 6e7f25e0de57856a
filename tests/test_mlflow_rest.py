"""The predictor's MLflow REST client against a real MLflow server, and against a hostile one.

It must find and fetch exactly what MLflow's own client does, and trust nothing a server
lists: a path out of the folder, or a file longer than its listed size, is refused.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from iris_devstack.processes import VENV_BIN
from iris_predictor.mlflow_rest import (
    ArtifactEntry,
    MlflowRefusedError,
    MlflowRest,
    MlflowUnreachableError,
    download_listed,
)
from iris_shared.registry import LOGISTIC_REGRESSION, MISSING_ALIAS_ERROR, PRODUCTION

pytestmark = pytest.mark.integration


def test_the_alias_and_the_files_are_what_mlflows_client_finds(
    trained_registry: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    rest = MlflowRest(trained_registry, connect_timeout_s=2)
    version = rest.version_by_alias(LOGISTIC_REGRESSION, PRODUCTION)
    expected = MlflowClient(trained_registry).get_model_version_by_alias(
        LOGISTIC_REGRESSION, PRODUCTION
    )
    assert (version["version"], version["run_id"]) == (expected.version, expected.run_id)

    folder = rest.folder(rest.version_files_uri(LOGISTIC_REGRESSION, version["version"]))
    listing: list[ArtifactEntry] = []
    pending = [""]
    while pending:
        for entry in folder.list(pending.pop()):
            listing.append(entry)
            if entry.is_dir:
                pending.append(entry.path)
    ours = download_listed(folder, listing, tmp_path / "ours")
    theirs = Path(
        download_artifacts(
            artifact_uri=f"models:/{LOGISTIC_REGRESSION}/{version['version']}",
            dst_path=str(tmp_path / "theirs"),
            tracking_uri=trained_registry,
        )
    )

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    # MLflow's client also writes a note of the registered name and version it downloaded.
    assert files(ours) == {
        path: data for path, data in files(theirs).items() if path != "registered_model_meta"
    }
    assert "MLmodel" in files(ours)


def test_a_missing_alias_is_refused_with_mlflows_error_code(trained_registry: str) -> None:
    with pytest.raises(MlflowRefusedError) as refused:
        MlflowRest(trained_registry, connect_timeout_s=2).version_by_alias(
            LOGISTIC_REGRESSION, "no-such-alias"
        )
    assert refused.value.error_code == MISSING_ALIAS_ERROR


def test_an_mlflow_that_is_down_is_reported_at_once() -> None:
    with pytest.raises(MlflowUnreachableError):
        # Port 9 (discard) answers nothing on this machine: the connection is refused.
        MlflowRest("http://127.0.0.1:9", connect_timeout_s=2).version_by_alias("m", "a")


class HostileMlflow(BaseHTTPRequestHandler):
    """Lists a path out of the folder, and sends a file longer than it listed."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/2.0/mlflow-artifacts/artifacts?"):
            body = json.dumps(
                {
                    "files": [
                        {"path": "../escape", "is_dir": False, "file_size": 1},
                        {"path": "MLmodel", "is_dir": False, "file_size": 4},
                    ]
                }
            ).encode()
        else:
            body = b"far more than four bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile_mlflow() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_listed_path_out_of_the_folder_is_refused(hostile_mlflow: str) -> None:
    folder = MlflowRest(hostile_mlflow, connect_timeout_s=2).folder("mlflow-artifacts:/1/m")
    with pytest.raises(MlflowRefusedError, match="unsafe artefact path"):
        folder.list("")


def test_a_file_longer_than_listed_is_refused(hostile_mlflow: str, tmp_path: Path) -> None:
    folder = MlflowRest(hostile_mlflow, connect_timeout_s=2).folder("mlflow-artifacts:/1/m")
    with pytest.raises(MlflowRefusedError, match="larger than its listed 4 bytes"):
        download_listed(folder, [ArtifactEntry("MLmodel", False, 4)], tmp_path)


def test_loading_a_version_never_imports_mlflow(trained_registry: str, tmp_path: Path) -> None:
    """The serving process stays without MLflow's client: it is the heavier half of a
    worker's imports after scikit-learn."""
    script = f"""
import sys
from pathlib import Path
from iris_predictor.registry_alias import RegistryAlias
registry = RegistryAlias(
    {trained_registry!r}, {LOGISTIC_REGRESSION!r}, {PRODUCTION!r}, Path({str(tmp_path)!r})
)
loaded = registry.load(registry.resolve())
print(loaded.info.version, loaded.profile is not None, sorted(loaded.info.metrics)[:1])
print([name for name in sys.modules if name == "mlflow" or name.startswith("mlflow.")])
"""
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    served, imported = result.stdout.splitlines()
    assert served == "1 True ['accuracy']"
    assert imported == "[]"
