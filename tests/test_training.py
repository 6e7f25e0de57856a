"""Training against a real `mlflow server`: runs, versions, aliases, lineage, the quality gate,
determinism, and the DVC data flow on a fresh clone."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.support.core import cli_env, run_cli
from tests.support.processes import REPO_ROOT, VENV_BIN, start_mlflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LR = "Iris-LogisticRegression"
RF = "Iris-RandomForest"
LINEAGE_TAGS = {"data_md5", "data_rows", "git_commit", "params_hash"}


@pytest.fixture(scope="module")
def registry(logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry of this module's own, so the sequence of versions below is known."""
    process, uri = start_mlflow(logs_dir / "training", tmp_path_factory.mktemp("training-store"))
    yield uri
    process.stop()


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reports")


def train(
    uri: str, reports: Path, *overrides: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    args = ["train"] + [item for o in overrides for item in ("--set", o)]
    return run_cli(*args, tracking_uri=uri, cwd=cwd, env={"TRAINER_REPORTS_DIR": str(reports)})


@pytest.fixture(scope="module")
def baseline(registry: str, reports_dir: Path, data_ready: Path) -> MlflowClient:
    train(registry, reports_dir)
    return MlflowClient(registry)


def test_the_first_training_registers_both_models_in_production(baseline: MlflowClient) -> None:
    for name in (LR, RF):
        version = baseline.get_model_version_by_alias(name, "production")
        assert version.version == "1"
        assert set(version.tags) >= LINEAGE_TAGS, version.tags
        assert version.tags["data_rows"] == "150"
        assert version.tags["gate.outcome"] == "first_version"


def test_each_run_logs_params_metrics_artefacts_and_lineage(baseline: MlflowClient) -> None:
    version = baseline.get_model_version_by_alias(LR, "production")
    run = baseline.get_run(version.run_id)
    assert run.data.params["C"] == "1.0"
    for metric in ("accuracy", "f1_macro", "precision_Iris-setosa", "recall_Iris-virginica"):
        assert 0.0 <= run.data.metrics[metric] <= 1.0
    assert run.data.metrics["accuracy"] >= 0.9
    assert set(run.data.tags) >= LINEAGE_TAGS
    assert run.data.tags["data_md5"] == version.tags["data_md5"]
    artefacts = {a.path for a in baseline.list_artifacts(run.info.run_id)}
    assert {
        "confusion_matrix.png",
        "classification_report.txt",
        "classification_report.json",
    } <= artefacts


def test_the_logged_model_is_one_pipeline_with_a_named_signature(
    baseline: MlflowClient, registry: str
) -> None:
    import mlflow.pyfunc
    import mlflow.sklearn

    mlflow.set_tracking_uri(registry)
    model = mlflow.pyfunc.load_model(f"models:/{LR}@production")
    inputs = [spec.name for spec in model.metadata.get_input_schema().inputs]
    assert inputs == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    pipeline = mlflow.sklearn.load_model(f"models:/{LR}@production")
    assert [name for name, _ in pipeline.steps] == ["scaler", "classifier"]


def test_same_data_and_params_give_identical_metrics_and_a_challenger(
    baseline: MlflowClient, registry: str, reports_dir: Path
) -> None:
    train(registry, reports_dir)
    first = baseline.get_model_version(LR, "1")
    second = baseline.get_model_version(LR, "2")
    assert (
        baseline.get_run(first.run_id).data.metrics == baseline.get_run(second.run_id).data.metrics
    )
    assert first.tags["params_hash"] == second.tags["params_hash"]
    assert baseline.get_model_version_by_alias(LR, "challenger").version == "2"
    assert baseline.get_model_version_by_alias(LR, "production").version == "1"
    assert json.loads((reports_dir / "metrics.json").read_text())[LR]["version"] == 2


def test_a_crippled_candidate_is_registered_without_an_alias_and_with_the_reason(
    baseline: MlflowClient, registry: str, reports_dir: Path
) -> None:
    result = train(
        registry,
        reports_dir,
        "models.random_forest.n_estimators=1",
        "models.random_forest.max_depth=1",
    )
    assert "gate failed" in result.stdout
    newest = max(baseline.search_model_versions(f"name='{RF}'"), key=lambda v: int(v.version))
    assert newest.tags["gate.outcome"] == "failed"
    assert "f1_macro" in newest.tags["gate.reason"]
    aliases = baseline.get_registered_model(RF).aliases
    assert newest.version not in aliases.values()
    assert aliases["production"] == "1"


def test_promote_moves_production_and_retires_the_challenger_alias(
    baseline: MlflowClient, registry: str
) -> None:
    challenger = baseline.get_model_version_by_alias(LR, "challenger").version
    out = run_cli("promote", challenger, "--model", LR, tracking_uri=registry)
    assert f"production -> v{challenger}" in out.stdout
    aliases = baseline.get_registered_model(LR).aliases
    assert aliases == {"production": challenger}
    listing = json.loads(run_cli("models", "--json", tracking_uri=registry).stdout)
    assert any(v["name"] == LR and v["aliases"] == ["production"] for v in listing)


def test_promoting_an_unknown_version_fails_clearly(baseline: MlflowClient, registry: str) -> None:
    result = run_cli("promote", "999", "--model", LR, tracking_uri=registry, check=False)
    assert result.returncode != 0
    assert "no version 999" in result.stderr


def test_bad_data_stops_training_with_a_report(registry: str, tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    with (clone / "data" / "iris.csv").open("a") as handle:
        handle.write("5.0,,1.5,0.3,Iris-setosa\n6.0,2.8,4.4,1.4,Iris-martian\n")
    result = run_cli("train", tracking_uri=registry, cwd=clone, check=False)
    assert result.returncode != 0
    assert "nothing was trained" in result.stderr
    assert "line 152" in result.stderr
    assert "line 153" in result.stderr


def _clone(tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    run_cli("data", "bootstrap", cwd=clone, env={"TRAINER_REPO_ROOT": str(clone)})
    return clone


def dvc(clone: Path, *args: str, uri: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(VENV_BIN / "dvc"), *args],
        cwd=clone,
        env=cli_env(uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def test_a_fresh_clone_gets_its_data_and_the_seed_data_flow_works(
    registry: str, tmp_path: Path
) -> None:
    clone = _clone(tmp_path)
    # The data, not the pipeline: a fresh clone has not run `dvc repro` yet.
    assert "up to date" in dvc(clone, "status", "data/iris.csv.dvc").stdout.lower()
    # The seed's phase 3: append rows, dvc add, dvc push, git commit.
    with (clone / "data" / "iris.csv").open("a") as handle:
        handle.write(
            "5.0,3.5,1.5,0.3,Iris-setosa\n6.0,2.8,4.4,1.4,Iris-versicolor\n7.0,3.1,6.0,2.2,Iris-virginica\n"
        )
    dvc(clone, "add", "data/iris.csv")
    dvc(clone, "push")
    subprocess.run(
        ["git", "-C", str(clone), "commit", "-qam", "data v2"],
        check=True,
        env={
            **cli_env(),
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )
    new_md5 = (clone / "data" / "iris.csv.dvc").read_text().split("md5: ")[1].split()[0]

    run_cli("train", tracking_uri=registry, cwd=clone, env={"TRAINER_REPO_ROOT": str(clone)})
    client = MlflowClient(registry)
    newest = max(client.search_model_versions(f"name='{LR}'"), key=lambda v: int(v.version))
    assert newest.tags["data_md5"] == new_md5
    assert newest.tags["data_rows"] == "153"
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert newest.tags["git_commit"] == head

    # A clone of that clone cannot invent v2: it says so, then pulls it from the remote named.
    second = tmp_path / "second"
    subprocess.run(["git", "clone", "-q", str(clone), str(second)], check=True)
    env = {"TRAINER_REPO_ROOT": str(second)}
    refused = run_cli("data", "bootstrap", cwd=second, env=env, check=False)
    assert refused.returncode != 0
    assert new_md5 in refused.stderr
    assert "dvc pull" in refused.stderr
    run_cli("data", "bootstrap", "--remote", str(clone / "dvc-storage"), cwd=second, env=env)
    assert (second / "data" / "iris.csv").read_bytes() == (clone / "data" / "iris.csv").read_bytes()


def test_dvc_repro_runs_the_pipeline(registry: str, tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    dvc(clone, "repro", uri=registry)
    metrics = json.loads((clone / "reports" / "metrics.json").read_text())
    assert set(metrics) == {LR, RF}
    shown = dvc(clone, "metrics", "show", uri=registry).stdout
    assert "f1_macro" in shown
    assert "validation.json" in "".join(p.name for p in (clone / "reports").iterdir())
