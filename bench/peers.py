"""The serving frameworks users would pick instead, on the same model: MLServer 1.7 with
mlserver-sklearn and BentoML 1.4, each in a virtual environment of its own outside the
project's lock (made on demand with uv under .state/bench/venvs/), each on its own protocol.

The model is the registry's version under `production`, loaded with the predictor's own loader
(skops, checked) and written with joblib, the format both frameworks load. scikit-learn is
pinned in each environment to the project's version, so the file loads into the same classes.

Settings that differ from each framework's defaults, each in the peer's favour or needed to
run at all (the report repeats them):
  - MLServer: `"parallel_workers": 0` (inference in the server process): its worker pool dies at
    start on this machine with "There is no current event loop in thread 'MainThread'".
    `"debug": false`: the default `true` writes an access-log line per request.
  - BentoML: `workers=2` as the issue asks; the access log is off (`logging.access.enabled`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow.artifacts

from bench.baselines import RunningServer
from bench.config import MODEL_NAME, ROOT
from bench.console import attempt, say
from bench.loads import FLOWER, bentoml_body, encoded, v2_json_body
from iris_devstack.processes import ManagedProcess, free_port, start_process, wait_for_answer
from iris_shared.model_files import load_model_files

PEER_VENVS = ROOT / ".state" / "bench" / "venvs"
PEERS_DIR = Path(__file__).with_name("peer_services")
BENTOML_WORKERS = 2
MLSERVER_VERSION = "1.7.1"
BENTOML_VERSION = "1.4.40"


class PeerSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class PeerEnvironment:
    name: str
    requirements: tuple[str, ...]

    @property
    def path(self) -> Path:
        return PEER_VENVS / self.name

    @property
    def bin(self) -> Path:
        return self.path / "bin"


def peer_environments() -> dict[str, PeerEnvironment]:
    sklearn = f"scikit-learn=={metadata.version('scikit-learn')}"
    return {
        "mlserver": PeerEnvironment(
            "mlserver",
            (f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}", sklearn),
        ),
        "bentoml": PeerEnvironment("bentoml", (f"bentoml=={BENTOML_VERSION}", sklearn)),
    }


def ensure_environment(environment: PeerEnvironment) -> None:
    """Create the peer's venv unless one with exactly these requirements exists."""
    marker = environment.path / "bench-requirements.txt"
    wanted = "\n".join(environment.requirements) + "\n"
    if (environment.bin / "python").exists() and marker.exists() and marker.read_text() == wanted:
        return
    uv = shutil.which("uv")
    if uv is None:
        raise PeerSetupError("uv is not on PATH; the peers' environments are made with it")
    say(f"creating {environment.path.relative_to(ROOT)}: {' '.join(environment.requirements)}")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    log = environment.path.parent / f"{environment.name}-install.log"
    environment.path.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [uv, "venv", "--clear", "--python", python, str(environment.path)],
        [
            uv,
            "pip",
            "install",
            "--python",
            str(environment.bin / "python"),
            *environment.requirements,
        ],
    ]
    with log.open("wb") as out:
        for step in steps:
            completed = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if completed.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise PeerSetupError(f"{' '.join(step[:3])} failed:\n{tail}")
    marker.write_text(wanted)


def installed_versions(environment: PeerEnvironment) -> dict[str, str]:
    names = [requirement.split("==")[0] for requirement in environment.requirements]
    script = (
        "import json, sys\nfrom importlib import metadata\n"
        "print(json.dumps({n: metadata.version(n) for n in sys.argv[1:]}))"
    )
    completed = subprocess.run(
        [str(environment.bin / "python"), "-c", script, *names, "numpy"],
        capture_output=True,
        text=True,
        check=True,
    )
    versions: dict[str, str] = json.loads(completed.stdout)
    return versions


def export_joblib(version: str, folder: Path) -> Path:
    """The registry's `version` through the predictor's loader, written with joblib."""
    folder.mkdir(parents=True, exist_ok=True)
    downloaded = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(folder / "mlflow-model")
    )
    model = load_model_files(Path(downloaded))
    target = folder / "model.joblib"
    joblib.dump(model, target)
    return target


def _peer_env(environment: PeerEnvironment, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the project's (.env, MLflow URIs) leaks into a peer."""
    return {
        "PATH": f"{environment.bin}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(environment.path)),
        "LANG": "C.UTF-8",
        "VIRTUAL_ENV": str(environment.path),
        **extra,
    }


@dataclass
class PeerServer:
    """A running peer: the server, its libraries' versions and the settings it runs with."""

    server: RunningServer
    versions: dict[str, str]
    settings: dict[str, Any]


def _launch(
    environment: PeerEnvironment,
    command: list[str],
    env: dict[str, str],
    folder: Path,
    logs: Path,
    url: str,
    first: tuple[str, bytes],
) -> tuple[ManagedProcess, float]:
    """Start the peer and time it to its first 200 answer to a one-row body (path, body)."""
    process = start_process(environment.name, command, env, logs, cwd=folder)
    path, body = first
    headers = {"Content-Type": "application/json"}
    try:
        return process, wait_for_answer(process, url + path, body, headers, timeout=180)
    except Exception:
        process.stop()
        raise


def start_mlserver(environment: PeerEnvironment, model: Path, work: Path, logs: Path) -> PeerServer:
    """`mlserver start` on a folder holding settings.json, model-settings.json and the model."""
    folder = work / "mlserver"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "model.joblib")
    port = free_port()
    settings = {
        "parallel_workers": 0,
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
    }
    model_settings = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    command = [str(environment.bin / "mlserver"), "start", str(folder)]
    url = f"http://127.0.0.1:{port}"
    first = (f"/v2/models/{MODEL_NAME}/infer", encoded(v2_json_body([FLOWER])))
    process, startup_s = _launch(
        environment, command, _peer_env(environment), folder, logs, url, first
    )
    return PeerServer(
        RunningServer(process, url, startup_s, command, 1),
        installed_versions(environment),
        {"settings.json": settings, "model-settings.json": model_settings},
    )


def start_bentoml(environment: PeerEnvironment, model: Path, work: Path, logs: Path) -> PeerServer:
    """`bentoml serve` on bench/peer_services/bentoml_service.py."""
    port = free_port()
    config = work / "bentoml-config.yaml"
    config.write_text(
        "services:\n  IrisClassifier:\n    logging:\n      access:\n        enabled: false\n"
    )
    env = _peer_env(
        environment,
        IRIS_BENCH_MODEL=str(model),
        BENTOML_HOME=str(work / "bentoml-home"),
        BENTOML_CONFIG=str(config),
        BENTOML_DO_NOT_TRACK="true",
    )
    command = [str(environment.bin / "bentoml"), "serve", "bentoml_service:IrisClassifier"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    first = ("/classify", encoded(bentoml_body([FLOWER])))
    process, startup_s = _launch(environment, command, env, PEERS_DIR, logs, url, first)
    return PeerServer(
        RunningServer(process, url, startup_s, command, BENTOML_WORKERS),
        installed_versions(environment),
        {"workers": BENTOML_WORKERS, "access_log": False},
    )


STARTERS = {"mlserver": start_mlserver, "bentoml": start_bentoml}


def start_peers(
    version: str, work: Path, logs: Path
) -> tuple[dict[str, PeerServer], dict[str, str]]:
    """MLServer and BentoML on the registry's `version`, each in its own environment; the
    error of each one that cannot be set up or started, by name."""
    started: dict[str, PeerServer] = {}
    model, error = attempt(
        "exporting the model", lambda: export_joblib(version, work / "peer-model")
    )
    errors: dict[str, str] = {}
    for name, environment in peer_environments().items():
        if model is None:
            errors[name] = f"model export failed: {error}"
            continue
        say(f"starting {name} ({' '.join(environment.requirements)})")

        def start(environment: PeerEnvironment = environment, model: Path = model) -> PeerServer:
            ensure_environment(environment)
            return STARTERS[environment.name](environment, model, work, logs)

        peer, failure = attempt(name, start)
        if peer is not None:
            started[name] = peer
        else:
            errors[name] = str(failure).splitlines()[0][:300]
    return started, errors
