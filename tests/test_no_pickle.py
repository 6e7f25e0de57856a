"""No registry file runs code in any service: a version whose model file runs code when
unpickled is registered, made `production` of a model of the test's own, and every service
that meets it refuses it without unpickling it.

The payload writes a marker file when unpickled; the first test proves it really runs code
(MLflow's own loader, pickle allowed), so its absence elsewhere means something.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
import redis
import yaml
from celery import Celery
from mlflow import MlflowClient
from mlflow.models import infer_signature

from iris_devstack.processes import REPO_ROOT, VENV_BIN, ManagedProcess, child_env, wait_until
from iris_devstack.supervisor import SUPERVISORD_CONF
from iris_shared.jobs import (
    RETRAIN_TASK,
    TERMINAL_STATUSES,
    JobKeys,
    JobStatus,
    TrainingJob,
    job_from_record,
)
from iris_shared.schemas import FEATURE_NAMES, SPECIES
from iris_shared.servable import PICKLE_SWITCH
from tests.support.core import register_copies
from tests.support.predictor import start_predictor, wait_ready
from tests.support.worker import start_worker

pytestmark = pytest.mark.integration


class RunsCodeWhenUnpickled:
    """Pickles to a call that writes `marker`: unpickling it is running the attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


def register_code_running_version(tracking_uri: str, name: str, marker: Path) -> str:
    """Log and register a pickle-flavoured sklearn model whose file runs code when unpickled.

    Its MLmodel is otherwise servable (the four measurements as doubles): only the format
    betrays it.
    """
    frame = pd.DataFrame([[5.1, 3.5, 1.4, 0.2]] * 3, columns=list(FEATURE_NAMES))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            RunsCodeWhenUnpickled(marker),
            name="model",
            serialization_format="pickle",
            signature=infer_signature(frame, pd.Series(list(SPECIES))),
            # Stated: inferring the requirements would load (so unpickle) the model here.
            pip_requirements=["scikit-learn"],
            registered_model_name=name,
        )
    return str(info.registered_model_version)


@pytest.fixture
def code_running_production(trained_registry: str, tmp_path: Path) -> tuple[str, str, Path]:
    """(version, model name, marker) of a model of this test's own whose `production` is a
    version that writes `marker` when unpickled."""
    name = f"Iris-Pickled-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "unpickled-marker"
    version = register_code_running_version(trained_registry, name, marker)
    MlflowClient(trained_registry).set_registered_model_alias(name, "production", version)
    assert not marker.exists()
    return version, name, marker


def load_with_mlflow(tracking_uri: str, uri: str, allow_pickle: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(VENV_BIN / "python"),
            "-c",
            f"import mlflow.sklearn; mlflow.sklearn.load_model({uri!r})",
        ],
        env=child_env(MLFLOW_TRACKING_URI=tracking_uri, **{PICKLE_SWITCH: allow_pickle}),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_with_the_switch_off_mlflow_itself_refuses_to_unpickle(
    trained_registry: str, code_running_production: tuple[str, str, Path]
) -> None:
    version, name, marker = code_running_production
    uri = f"models:/{name}/{version}"

    refused = load_with_mlflow(trained_registry, uri, "false")

    assert refused.returncode != 0
    assert "Deserializing this model is disallowed" in refused.stderr
    assert not marker.exists()

    # The control: with pickle allowed (MLflow's default) the same file runs its code.
    allowed = load_with_mlflow(trained_registry, uri, "true")
    assert allowed.returncode == 0, allowed.stderr
    assert marker.read_text() == "unpickled"


# --- the trainer's gate ------------------------------------------------------------------


def send_job(redis_url: str, keys: JobKeys, **kwargs: Any) -> str:
    sender = Celery("test-sender", broker=redis_url, set_as_current=False)
    sender.conf.broker_transport_options = {"global_keyprefix": keys.broker_prefix}
    job_id = str(uuid.uuid4())
    try:
        sender.send_task(RETRAIN_TASK, kwargs=kwargs, task_id=job_id, queue=keys.queue)
    finally:
        sender.close()
    return job_id


def wait_finished(
    redis_url: str, keys: JobKeys, job_id: str, worker: ManagedProcess, timeout: float
) -> TrainingJob:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = client.hgetall(keys.record(job_id))
            if record:
                job = job_from_record(job_id, record)
                if job.status in TERMINAL_STATUSES:
                    return job
            if worker.popen.poll() is not None:
                raise AssertionError(f"worker exited\n{worker.tail()}")
            time.sleep(0.1)
    finally:
        client.close()
    raise AssertionError(f"job {job_id} did not finish in {timeout} s\n{worker.tail()}")


@pytest.mark.slow
def test_the_gate_refuses_a_pickled_production_version_and_the_job_fails_naming_it(
    trained_registry: str,
    redis_url: str,
    logs_dir: Path,
    tmp_path: Path,
    code_running_production: tuple[str, str, Path],
) -> None:
    version, name, marker = code_running_production
    # A worker of this test's own, training this test's models on a queue of its own: the
    # session's models and workers never see the pickled version.
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["models"]["logistic_regression"]["registered_name"] = name
    params["models"]["random_forest"]["registered_name"] = f"{name}-forest"
    params["models"]["random_forest"]["n_estimators"] = 10
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    keys = JobKeys(f"nopickle-{uuid.uuid4().hex[:8]}")
    worker = start_worker(
        logs_dir,
        redis_url,
        trained_registry,
        name=f"nopickle-worker-{keys.namespace}",
        JOBS_NAMESPACE=keys.namespace,
        TRAINER_PARAMS_FILE=str(params_file),
    )
    try:
        job_id = send_job(redis_url, keys)
        job = wait_finished(redis_url, keys, job_id, worker, 240)
    finally:
        worker.kill()

    assert not marker.exists(), "the trainer unpickled the production version"
    assert job.status is JobStatus.failed
    # Refused, not retried: retrying cannot make the file safe.
    assert job.deliveries == 1
    assert job.error is not None
    assert f"production version {version} of {name} cannot be loaded safely" in job.error
    assert "'pickle'" in job.error
    assert job.result is None
    # The candidate was not compared, so it got no alias.
    aliases = MlflowClient(trained_registry).get_registered_model(name).aliases
    assert aliases == {"production": version}


# --- the predictor -----------------------------------------------------------------------


@pytest.mark.slow
def test_the_predictor_refuses_a_pickled_version_and_never_unpickles_it(
    trained_registry: str, logs_dir: Path, tmp_path: Path
) -> None:
    name = f"Iris-Pickled-{uuid.uuid4().hex[:8]}"
    [good] = register_copies(trained_registry, name, 1)
    client = MlflowClient(trained_registry)
    client.set_registered_model_alias(name, "production", good)
    process, url = start_predictor(logs_dir, trained_registry, PREDICTOR_MODEL_NAME=name)
    try:
        wait_ready(process, url)
        marker = tmp_path / "unpickled-marker"
        bad = register_code_running_version(trained_registry, name, marker)
        client.set_registered_model_alias(name, "production", bad)

        def reported() -> dict[str, Any]:
            body: dict[str, Any] = httpx.get(f"{url}/model").json()
            return body if body.get("load_error") else {}

        wait_until(reported, 30, "the load error in GET /model", process)
        body = reported()
        assert body["version"] == good
        assert body["load_error"]["version"] == bad
        reason = body["load_error"]["reason"]
        assert "'pickle'" in reason
        # A fixed vocabulary: no exception class or traceback text of the loader.
        assert "Error" not in reason
        assert "Traceback" not in reason
        assert not marker.exists(), "the predictor unpickled the version"
    finally:
        process.stop()


# --- the switch in every process -------------------------------------------------------


def switch_at_exit(code: str, **env: str) -> str:
    """Run `code` in a fresh interpreter; what the switch was when the process ended."""
    probe = (
        "import atexit, os\n"
        f"atexit.register(lambda: print('SWITCH=' + os.environ.get({PICKLE_SWITCH!r}, 'unset')))\n"
        f"{code}\n"
    )
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", probe],
        env={k: v for k, v in child_env(**env).items() if k != PICKLE_SWITCH},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("SWITCH=")]
    assert lines, result.stdout + result.stderr
    return lines[-1].removeprefix("SWITCH=")


@pytest.mark.parametrize(
    ("code", "env"),
    [
        # Settings that fail validation stop each server right after its first lines.
        (
            "import runpy; runpy.run_module('iris_gateway', run_name='__main__')",
            {"GATEWAY_PORT": "not-a-port"},
        ),
        (
            "import runpy; runpy.run_module('iris_predictor', run_name='__main__')",
            {"PREDICTOR_PORT": "not-a-port"},
        ),
        (
            "import sys; sys.argv = ['iris-mlops', '--help']\n"
            "from iris_trainer.cli import run\nrun()",
            {},
        ),
        (
            # What `celery worker` does first: import the task modules, then fork its pool.
            "from iris_trainer.celery_app import app\napp.loader.init_worker()",
            {},
        ),
    ],
    ids=["gateway", "predictor", "cli", "worker"],
)
def test_every_entry_point_turns_mlflow_unpickling_off(code: str, env: dict[str, str]) -> None:
    assert switch_at_exit(code, **env) == "false"


def test_importing_the_services_leaves_the_switch_alone() -> None:
    # Tests and tools import these modules; only starting a service turns the switch off.
    code = "import iris_trainer.tasks, iris_trainer.cli, iris_gateway.app, iris_predictor.app"
    assert switch_at_exit(code) == "unset"


def test_supervisord_turns_mlflow_unpickling_off_for_every_python_program() -> None:
    parser = configparser.RawConfigParser()
    parser.read(SUPERVISORD_CONF)
    programs = [s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")]
    python_programs = [
        p for p in programs if re.search(r"ENV_STACK_\w*VENV", parser[f"program:{p}"]["command"])
    ]
    assert {"mlflow", "trainer", "predictor", "gateway", "flower"} <= set(python_programs)
    for program in python_programs:
        environment = parser[f"program:{program}"].get("environment", "")
        assert f'{PICKLE_SWITCH}="false"' in environment, program


def test_the_gateway_never_imports_the_model_loader() -> None:
    code = (
        "import sys, iris_gateway.app, iris_gateway.__main__\n"
        "heavy = {'iris_shared.model_files', 'skops', 'sklearn', 'mlflow', 'numpy'}\n"
        "loaded = heavy & set(sys.modules)\n"
        "print(sorted(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_switch_is_named_as_mlflow_names_it() -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION

    assert MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name == PICKLE_SWITCH
