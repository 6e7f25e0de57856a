"""The servers the predictor is compared with, on the same model version: `mlflow models serve`,
a constant-answer endpoint launched exactly as supervisord launches the predictor (same command
line and worker count, only the app swapped), and the frameworks users would pick instead,
MLServer and BentoML, each in a virtual environment of its own outside the project's lock
(made on demand with uv under .state/bench/venvs/), each on its own protocol.

The peers' model is the registry's version loaded with the predictor's own loader (skops,
checked) and written with joblib, the format both load; scikit-learn is pinned in each
environment to the project's version. Settings that differ from each framework's defaults, each
in the peer's favour or needed to run at all (the report repeats them):
  - MLServer: `"parallel_workers": 0` (inference in the server process): its worker pool dies at
    start on this machine with "There is no current event loop in thread 'MainThread'".
    `"debug": false`: the default `true` writes an access-log line per request.
  - BentoML: `workers=2`, the count its goals were stated for; the access log is off
    (`logging.access.enabled`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow.artifacts
from supervisor.datatypes import dict_of_key_value_pairs

from bench.common import MLFLOW_SERVE_WORKERS, MODEL_NAME, ROOT, say
from bench.loads import FLOWER, JSON, V2, bentoml_body, encoded, mlflow_body, v2_json_body
from iris_devstack.private_stack import PrivateStack
from iris_devstack.processes import (
    ManagedProcess,
    free_port,
    start_process,
    wait_for_answer,
    wait_for_http,
)
from iris_devstack.supervisor import SUPERVISORD_CONF, program_section
from iris_predictor.config import PredictorSettings
from iris_shared.model_files import load_model_files

PEER_VENVS = ROOT / ".state" / "bench" / "venvs"
MLSERVER_VERSION, BENTOML_VERSION, BENTOML_WORKERS = "1.7.1", "1.4.40", 2
# `python -m iris_predictor`, alone or inside a shell command (`sh -c '... exec ... -m ...'`).
PREDICTOR_MODULE = re.compile(r"(-m\s+)iris_predictor(?=\s|$)")


@dataclass
class Server:
    """A running server, its cold start, and what the report says of how it runs."""

    process: ManagedProcess
    url: str
    startup_s: float
    command: list[str]
    workers: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()


def start_mlflow_serve(stack: PrivateStack, version: str) -> Server:
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
    command += ["-m", f"models:/{MODEL_NAME}/{version}", "-w", str(MLFLOW_SERVE_WORKERS)]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    # The bench process already carries MLFLOW_TRACKING_URI and the venv first on PATH.
    process = start_process("mlflow-serve", command, dict(os.environ), stack.logs, cwd=stack.work)
    url = f"http://127.0.0.1:{port}"
    # Timed to the first answer, as the peers are: /ping turns 200 once the model is loaded,
    # but a worker may still be starting.
    first = encoded(mlflow_body([FLOWER], "dataframe_split"))
    startup_s = wait_for_answer(process, f"{url}/invocations", first, JSON, timeout=300)
    return Server(process, url, startup_s, command, MLFLOW_SERVE_WORKERS)


def predictor_launch(stack: PrivateStack, port: int) -> tuple[list[str], dict[str, str]]:
    """The predictor's supervisord command and environment, on `port`, serving the constant app.
    Read from infra/local/supervisord.conf rather than copied, so the constant endpoint keeps
    the predictor's interpreter, runner and settings when they change."""
    section, env = program_section("predictor"), stack.stack_env()
    expansions = {f"ENV_{key}": value for key, value in env.items()} | {
        "ENV_STACK_PREDICTOR_PORT": str(port),
        "here": str(SUPERVISORD_CONF.parent),
        **dict.fromkeys(("program_name", "group_name"), "predictor"),
        # Numbers: supervisord formats them with %d (replicas' ports and names).
        **{"process_num": 0, "numprocs": 1},
    }
    predictor = shlex.split(section["command"] % expansions)
    command = [PREDICTOR_MODULE.sub(r"\g<1>bench.constant_app", token) for token in predictor]
    if command == predictor:
        raise RuntimeError(
            f"the predictor's command in {SUPERVISORD_CONF.name} does not run "
            f"`python -m iris_predictor`; teach bench/servers.py its form: {section['command']}"
        )
    env.update(dict_of_key_value_pairs(section.get("environment", "") % expansions))
    # The runner reads its port from the predictor's settings; never the predictor's own.
    env.update(PREDICTOR_PORT=str(port), PREDICTOR_HOST="127.0.0.1")
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        # Never share (or empty) the predictor's metric files: a folder of the server's own.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(stack.work / "constant-metrics")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return command, env


def start_constant_server(stack: PrivateStack) -> Server:
    port = free_port()
    command, env = predictor_launch(stack, port)
    process = start_process("constant", command, env, stack.logs, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    # The runner takes the worker count from the predictor's settings (PREDICTOR_WORKERS, .env).
    workers = int(env.get("PREDICTOR_WORKERS") or PredictorSettings().workers)
    return Server(process, url, wait_for_http(process, f"{url}/readyz", 120), command, workers)


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """The peer's venv, made unless one with exactly these requirements exists."""
    venv, wanted = PEER_VENVS / name, "\n".join(requirements) + "\n"
    marker, log = venv / "bench-requirements.txt", PEER_VENVS / f"{name}-install.log"
    if marker.exists() and marker.read_text() == wanted:
        return venv
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not on PATH; the peers' environments are made with it")
    say(f"creating {venv.relative_to(ROOT)}: {' '.join(requirements)}")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    PEER_VENVS.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        for step in (
            [uv, "venv", "--clear", "--python", python, str(venv)],
            [uv, "pip", "install", "--python", str(venv / "bin/python"), *requirements],
        ):
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"{' '.join(step[:3])} failed:\n{tail}")
    marker.write_text(wanted)
    return venv


def start_peer(name: str, model: Path, work: Path, logs: Path) -> Server:
    """MLServer or BentoML on the joblib `model`, timed to its first 200 to a one-row body."""
    port, folder = free_port(), work / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "mlserver":
        requirements = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}"]
        shutil.copyfile(model, folder / "model.joblib")
        settings: dict[str, Any] = {
            "settings.json": {"parallel_workers": 0, "debug": False, "host": "127.0.0.1"}
            | {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port()},
            "model-settings.json": {
                "name": MODEL_NAME,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "1"},
            },
        }
        for file, content in settings.items():
            (folder / file).write_text(json.dumps(content, indent=2))
        arguments, extra, workers = ["start", str(folder)], {}, 1
        first, cwd = (V2, encoded(v2_json_body([FLOWER]))), folder
    else:
        requirements = [f"bentoml=={BENTOML_VERSION}"]
        config = folder / "config.yaml"
        access_off = {"logging": {"access": {"enabled": False}}}  # JSON is YAML too
        config.write_text(json.dumps({"services": {"IrisClassifier": access_off}}))
        settings, workers = {"workers": BENTOML_WORKERS, "access_log": False}, BENTOML_WORKERS
        arguments = ["serve", "bentoml_service:IrisClassifier", "--host", "127.0.0.1"]
        arguments += ["--port", str(port)]
        extra = {"IRIS_BENCH_MODEL": str(model), "BENTOML_HOME": str(folder / "home")}
        extra |= {"BENTOML_CONFIG": str(config), "BENTOML_DO_NOT_TRACK": "true"}
        first = ("/classify", encoded(bentoml_body([FLOWER])))
        cwd = Path(__file__).with_name("peer_services")
    requirements.append(f"scikit-learn=={metadata.version('scikit-learn')}")
    venv = ensure_venv(name, requirements)
    # A clean environment: nothing of the project's (.env, MLflow URIs) leaks into a peer.
    env = {"PATH": f"{venv}/bin{os.pathsep}/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env |= {"HOME": os.environ.get("HOME", str(venv)), "VIRTUAL_ENV": str(venv)}
    command = [str(venv / "bin" / name), *arguments]
    process = start_process(name, command, env | extra, logs, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        startup_s = wait_for_answer(process, url + first[0], first[1], JSON, timeout=180)
    except Exception:
        process.stop()
        raise
    site = [str(next(venv.glob("lib/python*/site-packages")))]
    names = [*(requirement.split("==")[0] for requirement in requirements), "numpy"]
    versions = {n: next(iter(metadata.distributions(name=n, path=site))).version for n in names}
    return Server(process, url, startup_s, command, workers, versions, settings)


def export_joblib(version: str, work: Path) -> Path:
    """The registry's `version` through the predictor's loader, written with joblib."""
    folder = work / "peer-model"
    folder.mkdir(parents=True, exist_ok=True)
    downloaded = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(folder / "mlflow-model")
    )
    joblib.dump(load_model_files(Path(downloaded)), folder / "model.joblib")
    return folder / "model.joblib"
