"""Two of the servers the predictor is compared with (the peers are in bench/peers.py):
`mlflow models serve` on the same model version, and a constant-answer endpoint launched
exactly as supervisord launches the predictor (same command line, same worker count, only the
app swapped)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from supervisor.datatypes import dict_of_key_value_pairs

from bench.config import MLFLOW_SERVE_WORKERS, MODEL_NAME, ROOT
from bench.loads import FLOWER, encoded, mlflow_body
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

# The predictor's entry points, as the supervisord command may name them, and the constant
# server's counterpart of each: a uvicorn factory, or `python -m <package>`.
CONSTANT_ENTRY_POINTS = {
    "iris_predictor.app:create_app": "bench.constant_app:create_app",
    "iris_predictor": "bench.constant_app",
}
_WORKERS_FLAG = re.compile(r"(?:--workers|-w)[= ](\d+)")
# `python -m iris_predictor` inside a shell command (`sh -c '... exec .../python -m ...'`).
_MODULE_IN_SCRIPT = re.compile(r"(-m\s+)iris_predictor(?=\s|$)")


def constant_token(token: str) -> str:
    """One token of the predictor's command with the constant server's entry point in place
    of the predictor's, whether the token is the entry point or a shell script naming it."""
    if token in CONSTANT_ENTRY_POINTS:
        return CONSTANT_ENTRY_POINTS[token]
    runner = CONSTANT_ENTRY_POINTS["iris_predictor"]
    return _MODULE_IN_SCRIPT.sub(lambda found: found.group(1) + runner, token)


class LaunchError(RuntimeError):
    pass


@dataclass
class RunningServer:
    process: ManagedProcess
    url: str
    startup_s: float
    command: list[str]
    workers: int


def start_mlflow_serve(stack: PrivateStack, version: str) -> RunningServer:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{MODEL_NAME}/{version}",
        "-w",
        str(MLFLOW_SERVE_WORKERS),
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    # The bench process already carries MLFLOW_TRACKING_URI and the venv first on PATH.
    process = start_process("mlflow-serve", command, dict(os.environ), stack.logs, cwd=stack.work)
    url = f"http://127.0.0.1:{port}"
    # Timed to the first answer, as the peers are: /ping turns 200 once the model is loaded,
    # but a worker may still be starting.
    first = encoded(mlflow_body([FLOWER], "dataframe_split"))
    startup_s = wait_for_answer(
        process, f"{url}/invocations", first, {"Content-Type": "application/json"}, timeout=300
    )
    return RunningServer(process, url, startup_s, command, MLFLOW_SERVE_WORKERS)


def predictor_launch(stack: PrivateStack, port: int) -> tuple[list[str], dict[str, str], int]:
    """The predictor's supervisord command and environment, on `port`, serving the constant app.

    Read from infra/local/supervisord.conf rather than copied, so the constant endpoint keeps
    the predictor's server, flags and worker count when they change.
    """
    section = program_section("predictor")
    env = stack.stack_env()
    expansions = {
        **{f"ENV_{key}": value for key, value in env.items()},
        "ENV_STACK_PREDICTOR_PORT": str(port),
        "here": str(SUPERVISORD_CONF.parent),
        "program_name": "predictor",
        "group_name": "predictor",
        # Numbers: supervisord formats them with %d (replicas' ports and names).
        "process_num": 0,
        "numprocs": 1,
    }
    predictor_command = shlex.split(section["command"] % expansions)
    command = [constant_token(token) for token in predictor_command]
    if command == predictor_command:
        raise LaunchError(
            f"the predictor's command in {SUPERVISORD_CONF.name} names none of "
            f"{sorted(CONSTANT_ENTRY_POINTS)}; teach bench/baselines.py its new form: "
            f"{section['command']}"
        )
    if "environment" in section:
        env.update(dict_of_key_value_pairs(section["environment"] % expansions))
    # The runner form reads its port from the predictor's settings; never the predictor's own.
    env.update(PREDICTOR_PORT=str(port), PREDICTOR_HOST="127.0.0.1")
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        # Never share (or empty) the predictor's metric files: a folder of the server's own.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(stack.work / "constant-metrics")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    workers_flag = _WORKERS_FLAG.search(" ".join(command))
    if workers_flag:
        workers = int(workers_flag.group(1))
    elif f"-m {CONSTANT_ENTRY_POINTS['iris_predictor']}" in " ".join(command):
        # The runner takes the count from the predictor's settings (PREDICTOR_WORKERS, .env).
        workers = int(env.get("PREDICTOR_WORKERS") or PredictorSettings().workers)
    else:
        workers = 1
    return command, env, workers


def start_constant_server(stack: PrivateStack) -> RunningServer:
    port = free_port()
    command, env, workers = predictor_launch(stack, port)
    process = start_process("constant", command, env, stack.logs, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    startup_s = wait_for_http(process, f"{url}/readyz", timeout=120)
    return RunningServer(process, url, startup_s, command, workers)
