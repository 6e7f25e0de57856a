"""Code tests for what the CLI and the Celery task share: expected failures and their messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from iris_shared.jobs import JobKeys
from iris_trainer.celery_app import celery_config
from iris_trainer.cli import train_command
from iris_trainer.config import TrainerSettings, WorkerSettings, get_settings
from iris_trainer.dataset import iris_v1_csv
from iris_trainer.pipeline.run import TrainingRefused, train_from_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
# Nothing listens here: these runs must fail before they would talk to MLflow.
UNREACHABLE_MLFLOW = "http://127.0.0.1:9"
SECRET = "API_TOKEN=s3cr3t-value-never-to-be-quoted"


def checkout(tmp_path: Path, data: bytes) -> TrainerSettings:
    """A checkout of params.yaml and the given data/iris.csv."""
    shutil.copy(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "iris.csv").write_bytes(data)
    return TrainerSettings(
        _env_file=None, repo_root=tmp_path, mlflow_tracking_uri=UNREACHABLE_MLFLOW
    )


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    # The CLI reads its settings once per process; each test here is a process of its own.
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_worker_consumes_and_writes_only_under_its_deployments_namespace() -> None:
    config = celery_config(WorkerSettings(_env_file=None, jobs_namespace="stack-a"))
    keys = JobKeys("stack-a")

    assert config["task_default_queue"] == keys.queue
    assert config["broker_transport_options"]["global_keyprefix"] == keys.broker_prefix
    # The job record is the result: nothing else is written per job.
    assert config["task_ignore_result"] is True


def test_a_heartbeat_slower_than_a_third_of_the_visibility_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="HEARTBEAT_INTERVAL"):
        WorkerSettings(_env_file=None, visibility_timeout_s=30, heartbeat_interval_s=11)


def test_a_job_namespace_that_could_break_key_names_is_refused() -> None:
    with pytest.raises(ValueError, match=r"jobs_namespace|JOBS_NAMESPACE"):
        WorkerSettings(_env_file=None, jobs_namespace="a b:*")


def test_bad_data_is_refused_naming_lines_but_never_quoting_them(tmp_path: Path) -> None:
    bad_rows = b"5.0,,1.5,0.3,Iris-setosa\n6.0,2.8,4.4,1.4,Iris-martian\n"
    settings = checkout(tmp_path, iris_v1_csv() + bad_rows)

    with pytest.raises(TrainingRefused) as refused:
        train_from_settings(settings)

    message = str(refused.value)
    assert "nothing was trained" in message
    assert "line 152, column sepal_width: missing value" in message
    assert "line 153, column species: unknown species" in message
    assert "Iris-martian" not in message
    # The local CLI prints the full report, values included.
    assert refused.value.report is not None
    assert "Iris-martian" in refused.value.report.summary()


@pytest.mark.parametrize(
    "content",
    [
        f"{SECRET}\nGATEWAY_ENVIRONMENT=production\n".encode(),
        f"sepal_length,sepal_width,petal_length,petal_width,species\n{SECRET},1,2,3,x\n".encode(),
        b"\xff\xfe" + SECRET.encode(),
    ],
    ids=["env-file", "values", "not-utf8"],
)
def test_a_file_that_is_not_the_data_set_is_never_quoted(tmp_path: Path, content: bytes) -> None:
    settings = checkout(tmp_path, content)

    with pytest.raises(TrainingRefused) as refused:
        train_from_settings(settings)

    assert "s3cr3t" not in str(refused.value)


def test_invalid_overrides_are_refused_with_the_field_named(tmp_path: Path) -> None:
    settings = checkout(tmp_path, iris_v1_csv())

    with pytest.raises(TrainingRefused, match=r"models\.random_forest\.n_estimators"):
        train_from_settings(settings, overrides={"models": {"random_forest": {"n_estimators": 0}}})


def test_the_local_cli_prints_the_full_report_with_values(
    tmp_path: Path, fresh_settings: None
) -> None:
    bad_rows = b"5.0,,1.5,0.3,Iris-setosa\n6.0,2.8,4.4,1.4,Iris-martian\n"
    checkout(tmp_path, iris_v1_csv() + bad_rows)

    result = CliRunner().invoke(
        train_command,
        [],
        env={"TRAINER_REPO_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": UNREACHABLE_MLFLOW},
    )

    assert result.exit_code == 1
    assert "nothing was trained" in result.stderr
    assert "line 152" in result.stderr
    assert "line 153" in result.stderr
    # Local and trusted: the CLI quotes the offending values, a job never does.
    assert "'Iris-martian'" in result.stderr


# A pool process as billiard makes one (its terminate handler installed), whose job is inside
# a C extension when the worker stops it: the SystemExit the handler raises comes out of the
# extension as a TypeError, as matplotlib's pybind11 functions report it.
STOPPED_INSIDE_AN_EXTENSION = """
import os, signal, time
from billiard.common import reset_signals
from iris_trainer.celery_app import stop_as_system_exit

reset_signals()

def extension_call():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except SystemExit:
        raise TypeError("incompatible function arguments") from None

try:
    with stop_as_system_exit():
        extension_call()
except BaseException as exc:
    print(type(exc).__name__)
"""


@pytest.mark.integration
def test_a_stop_that_an_extension_turned_into_another_error_is_still_a_stop() -> None:
    ended = subprocess.run(
        [sys.executable, "-c", STOPPED_INSIDE_AN_EXTENSION],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ended.stdout.strip() == "SystemExit", ended.stderr
