"""Training against a real `mlflow server`: runs, versions, aliases, lineage, the quality gate,
determinism, one version per job, promotion through the gateway, the CLI and `dvc repro` end
to end, and the DVC data flow on a fresh clone.

Every test trains into the session registry (`trained_registry`: version 1 of both models in
`production`), in this process through the pipeline unless the test is about a subprocess (the
CLI, DVC). A test reads only the versions it created itself, and puts back any alias it moved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result
from mlflow import MlflowClient

from iris_devstack.processes import REPO_ROOT, VENV_BIN, wait_until
from iris_shared.jobs import JobProgress, TrainingStage
from iris_shared.registry import (
    CHALLENGER,
    LINEAGE_TAGS,
    LOGISTIC_REGRESSION,
    PRODUCTION,
    RANDOM_FOREST,
    GateOutcome,
    VersionTag,
)
from iris_trainer.cli import models_command, promote_command
from iris_trainer.config import get_settings
from iris_trainer.dataset import BootstrapError, bootstrap
from tests.support.core import cli_env, run_cli, train_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LR = LOGISTIC_REGRESSION
RF = RANDOM_FOREST


@pytest.fixture(scope="module")
def client(trained_registry: str) -> MlflowClient:
    return MlflowClient(trained_registry)


def production_version(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, PRODUCTION).version)


def versions_of_job(client: MlflowClient, name: str, job_id: str) -> list[str]:
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{VersionTag.JOB_ID}` = '{job_id}'"
    )
    return sorted(str(v.version) for v in found)


def git(repo: Path, *args: str) -> str:
    identity = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**cli_env(), **identity},
    )
    return result.stdout.strip()


def dvc(repo: Path, *args: str, uri: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args],
        cwd=repo,
        env=cli_env(uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


# --- the session's first training ------------------------------------------------------------


def test_the_first_training_registers_both_models_in_production(client: MlflowClient) -> None:
    for name in (LR, RF):
        version = client.get_model_version(name, "1")
        assert production_version(client, name) == "1"
        assert set(version.tags) >= LINEAGE_TAGS, version.tags
        assert version.tags[VersionTag.DATA_ROWS] == "150"
        assert version.tags[VersionTag.GATE_OUTCOME] == GateOutcome.FIRST_VERSION
        assert VersionTag.JOB_ID not in version.tags  # trained outside a job


def test_each_run_logs_params_metrics_artefacts_and_lineage(client: MlflowClient) -> None:
    version = client.get_model_version(LR, "1")
    run = client.get_run(version.run_id)
    assert run.data.params["C"] == "1.0"
    for metric in ("accuracy", "f1_macro", "precision_Iris-setosa", "recall_Iris-virginica"):
        assert 0.0 <= run.data.metrics[metric] <= 1.0
    assert run.data.metrics["accuracy"] >= 0.9
    assert set(run.data.tags) >= LINEAGE_TAGS
    assert run.data.tags[VersionTag.DATA_MD5] == version.tags[VersionTag.DATA_MD5]
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "confusion_matrix.png",
        "classification_report.txt",
        "classification_report.json",
        "data_validation.json",
    } <= artefacts


def test_the_logged_model_is_one_pipeline_with_a_named_signature(trained_registry: str) -> None:
    import mlflow.pyfunc
    import mlflow.sklearn

    mlflow.set_tracking_uri(trained_registry)
    model = mlflow.pyfunc.load_model(f"models:/{LR}/1")
    inputs = [spec.name for spec in model.metadata.get_input_schema().inputs]
    assert inputs == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    pipeline = mlflow.sklearn.load_model(f"models:/{LR}/1")
    assert [name for name, _ in pipeline.steps] == ["scaler", "classifier"]


# --- the gate, and one job, one version ------------------------------------------------------


def test_a_crippled_candidate_is_registered_without_an_alias_and_with_the_reason(
    client: MlflowClient, trained_registry: str
) -> None:
    production_before = production_version(client, RF)

    result = train_in_process(
        trained_registry,
        overrides={"models": {"random_forest": {"n_estimators": 1, "max_depth": 1}}},
    )

    crippled = result.models[RF]
    assert crippled.gate == GateOutcome.FAILED
    assert crippled.aliases_set == []
    version = client.get_model_version(RF, crippled.version)
    assert version.tags[VersionTag.GATE_OUTCOME] == GateOutcome.FAILED
    assert "f1_macro" in version.tags[VersionTag.GATE_REASON]
    assert version.tags[VersionTag.GATE_COMPARED_WITH] == production_before
    aliases = client.get_registered_model(RF).aliases
    assert crippled.version not in aliases.values()
    assert aliases[PRODUCTION] == production_before


def test_a_job_registers_each_model_once_however_often_it_runs(
    client: MlflowClient, trained_registry: str
) -> None:
    job_id = str(uuid.uuid4())

    def crash_before_the_forest(progress: JobProgress) -> None:
        # As if the worker died once the first model was registered and gated.
        if progress.stage is TrainingStage.training and progress.model_name == RF:
            raise ConnectionError("worker lost")

    with pytest.raises(ConnectionError):
        train_in_process(trained_registry, job_id=job_id, on_progress=crash_before_the_forest)
    [first_lr] = versions_of_job(client, LR, job_id)
    assert versions_of_job(client, RF, job_id) == []

    retried = train_in_process(trained_registry, job_id=job_id)
    again = train_in_process(trained_registry, job_id=job_id)

    assert retried.models[LR].version == first_lr
    assert versions_of_job(client, LR, job_id) == [first_lr]
    assert versions_of_job(client, RF, job_id) == [retried.models[RF].version]
    assert again.models == retried.models
    # Nothing is trained again: only the registry is read.
    assert set(again.stage_seconds) == {"loading_data", "validating", "registering"}
    assert set(retried.stage_seconds) == set(TrainingStage)
    for name in (LR, RF):
        tags = client.get_model_version(name, retried.models[name].version).tags
        assert set(tags) >= LINEAGE_TAGS
        assert tags[VersionTag.JOB_ID] == job_id
        assert tags[VersionTag.GATE_OUTCOME] == retried.models[name].gate


# --- promotion goes through the gateway -------------------------------------------------------


def served_version(gateway_url: str) -> str | None:
    response = httpx.get(f"{gateway_url}/model", timeout=5)
    return str(response.json()["version"]) if response.status_code == 200 else None


def promote_cli(gateway_url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "promote",
        *args,
        check=False,
        env={"TRAINER_GATEWAY_URL": gateway_url, "API_TOKEN": token},
    )


def invoke(command: click.Command, args: list[str], env: dict[str, str]) -> Result:
    """Run one CLI command in this process (no interpreter to start) with these settings."""
    # The CLI reads its settings once per process; here each call is a process of its own.
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(command, args, env=env)
    finally:
        get_settings.cache_clear()


def test_promote_moves_production_through_the_gateway_and_retires_the_challenger_alias(
    client: MlflowClient, trained_registry: str, gateway_url: str, api_token: str
) -> None:
    original = production_version(client, LR)
    challenger = train_in_process(trained_registry).models[LR]
    assert challenger.aliases_set == [CHALLENGER]
    try:
        promoted = promote_cli(gateway_url, api_token, challenger.version, "--model", LR)

        assert promoted.returncode == 0, promoted.stderr
        assert f"{LR}: production -> v{challenger.version} (was v{original})" in promoted.stdout
        assert client.get_registered_model(LR).aliases == {PRODUCTION: challenger.version}
        listed = invoke(models_command, ["--json"], {"MLFLOW_TRACKING_URI": trained_registry})
        listing = json.loads(listed.stdout)
        assert any(
            v["name"] == LR and v["version"] == challenger.version and v["aliases"] == [PRODUCTION]
            for v in listing
        )
        # Waited for, so that the predictor cannot switch to it after the version is restored.
        wait_until(
            lambda: served_version(gateway_url) == challenger.version, 60, "promoted version served"
        )
    finally:
        # The session's predictor serves production: give it back the version it started with.
        client.set_registered_model_alias(LR, PRODUCTION, original)
        wait_until(lambda: served_version(gateway_url) == original, 60, "original version served")


def test_promote_fails_clearly_without_the_gateway_token_or_version(
    gateway_url: str, api_token: str
) -> None:
    def promote(url: str, token: str, *args: str) -> Result:
        return invoke(promote_command, list(args), {"TRAINER_GATEWAY_URL": url, "API_TOKEN": token})

    unknown = promote(gateway_url, api_token, "999", "--model", LR)
    wrong_token = promote(gateway_url, "not-the-token", "1", "--model", LR)
    unreachable = promote("http://127.0.0.1:9", api_token, "1")

    assert unknown.exit_code != 0
    assert "no version 999" in unknown.stderr
    assert wrong_token.exit_code != 0
    assert "refused API_TOKEN" in wrong_token.stderr
    assert unreachable.exit_code != 0
    assert "cannot reach the gateway at http://127.0.0.1:9" in unreachable.stderr


# --- the CLI and DVC, end to end -------------------------------------------------------------


def test_the_train_cli_gives_identical_metrics_a_challenger_and_the_dvc_metrics(
    client: MlflowClient, trained_registry: str, tmp_path: Path
) -> None:
    production_before = production_version(client, LR)
    existing = {v.version for v in client.search_model_versions(f"name = '{LR}'")}

    trained = run_cli(
        "train", tracking_uri=trained_registry, env={"TRAINER_REPORTS_DIR": str(tmp_path)}
    )

    version = str(json.loads((tmp_path / "metrics.json").read_text())[LR]["version"])
    assert version not in existing
    [summary] = [line for line in trained.stdout.splitlines() if line.startswith(f"{LR} v")]
    assert summary.startswith(f"{LR} v{version}: accuracy ")
    assert "gate passed (challenger)" in summary
    assert "time per stage: loading_data" in trained.stderr
    # MLflow's warnings that cannot apply here are not given (pipeline.run says why).
    assert "validate serving input" not in trained.stderr
    assert "resolve installed pip version" not in trained.stderr
    first = client.get_model_version(LR, "1")
    second = client.get_model_version(LR, version)
    assert client.get_run(first.run_id).data.metrics == client.get_run(second.run_id).data.metrics
    assert first.tags[VersionTag.PARAMS_HASH] == second.tags[VersionTag.PARAMS_HASH]
    assert client.get_model_version_by_alias(LR, CHALLENGER).version == version
    assert production_version(client, LR) == production_before


def test_dvc_repro_runs_the_pipeline(trained_registry: str, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    git(REPO_ROOT, "clone", "-q", str(REPO_ROOT), str(clone))
    # `dvc repro` needs the data, not a DVC remote: the bootstrap has its own test.
    shutil.copy(REPO_ROOT / "data" / "iris.csv", clone / "data" / "iris.csv")

    dvc(clone, "repro", uri=trained_registry)

    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    assert set(metrics) == {LR, RF}
    shown = dvc(clone, "metrics", "show", uri=trained_registry).stdout
    assert "f1_macro" in shown
    assert (clone / "reports" / "validation.json").exists()


def test_a_fresh_clone_gets_its_data_and_the_seed_data_flow_works(
    client: MlflowClient, trained_registry: str, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    git(REPO_ROOT, "clone", "-q", str(REPO_ROOT), str(clone))
    in_clone: dict[str, Any] = {"cwd": clone, "env": {"TRAINER_REPO_ROOT": str(clone)}}
    run_cli("data", "bootstrap", **in_clone)
    # The data, not the pipeline: a fresh clone has not run `dvc repro` yet.
    assert "up to date" in dvc(clone, "status", "data/iris.csv.dvc").stdout.lower()

    # Retraining on new data, as the README shows it: append rows, dvc add, dvc push, git commit.
    data = clone / "data" / "iris.csv"
    with data.open("a") as handle:
        handle.write(
            "5.0,3.5,1.5,0.3,Iris-setosa\n6.0,2.8,4.4,1.4,Iris-versicolor\n7.0,3.1,6.0,2.2,Iris-virginica\n"
        )
    dvc(clone, "add", "data/iris.csv")
    dvc(clone, "push")
    git(clone, "commit", "-qam", "data v2")
    new_md5 = (clone / "data" / "iris.csv.dvc").read_text().split("md5: ")[1].split()[0]
    version_two = data.read_bytes()

    result = train_in_process(trained_registry, repo_root=clone)
    tags = client.get_model_version(LR, result.models[LR].version).tags
    assert tags[VersionTag.DATA_MD5] == new_md5
    assert tags[VersionTag.DATA_ROWS] == "153"
    assert tags[VersionTag.GIT_COMMIT] == git(clone, "rev-parse", "HEAD")

    # A checkout whose remote lacks v2 cannot invent it: it says so, then pulls it from the
    # remote named. Without the file and the DVC cache, this clone is such a checkout.
    data.unlink()
    shutil.rmtree(clone / ".dvc" / "cache")
    # In this process: the CLI's part, printing the message, was run above.
    with pytest.raises(BootstrapError) as refused:
        bootstrap(clone, tmp_path / "empty-remote")
    assert new_md5 in str(refused.value)
    assert "dvc pull" in str(refused.value)
    bootstrap(clone, clone / "dvc-storage")
    assert data.read_bytes() == version_two
