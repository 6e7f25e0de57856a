"""`run_training`: the whole pipeline, with progress reported through a callback."""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.models import infer_signature

from iris_shared.jobs import CandidateOutcome, JobProgress, TrainingResult, TrainingStage
from iris_trainer.pipeline import registry
from iris_trainer.pipeline.data import (
    Dataset,
    dvc_recorded_md5,
    git_commit,
    git_resolve,
    load_dataset,
)
from iris_trainer.pipeline.evaluate import evaluate, score
from iris_trainer.pipeline.params import TrainingParams
from iris_trainer.pipeline.train import build_candidates, fit, split
from iris_trainer.pipeline.validation import DataValidationError, to_training_frame, validate

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[JobProgress], None]


def _no_progress(_: JobProgress) -> None:
    return None


def serving_requirements() -> list[str]:
    """Pin what the model needs to load, exactly as trained.

    Stated rather than inferred: inference exports the whole workspace lock (170 packages)
    and takes seconds per model.
    """
    import numpy
    import pandas
    import sklearn

    return [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pandas.__version__}",
        f"numpy=={numpy.__version__}",
    ]


def lineage_tags(dataset: Dataset, params: TrainingParams, repo_root: Path) -> dict[str, str]:
    recorded = dvc_recorded_md5(repo_root, params.data.path)
    commit = git_resolve(repo_root, dataset.rev) if dataset.rev else git_commit(repo_root)
    return {
        "data_md5": dataset.md5,
        "data_rows": str(dataset.rows),
        "data_source": dataset.source,
        # The working copy can differ from what `dvc add` recorded: say so rather than guess.
        "data_dvc_tracked": str(dataset.rev is not None or recorded == dataset.md5).lower(),
        "git_commit": commit,
        "params_hash": params.fingerprint(),
    }


def run_training(
    params: TrainingParams,
    repo_root: Path,
    *,
    data_rev: str | None = None,
    tracking_uri: str | None = None,
    on_progress: ProgressCallback = _no_progress,
) -> TrainingResult:
    """Validate the data, train every candidate, log it to MLflow, register it and gate it."""
    started_at = datetime.now(UTC)
    candidates = build_candidates(params)
    total = 2 + 3 * len(candidates)
    step = 0

    def report(stage: TrainingStage, model_name: str | None = None) -> None:
        nonlocal step
        step += 1
        on_progress(
            JobProgress(
                stage=stage,
                model_name=model_name,
                step=step,
                total_steps=total,
                started_at=started_at,
            )
        )

    report(TrainingStage.loading_data)
    dataset = load_dataset(repo_root, params.data.path, data_rev)

    report(TrainingStage.validating)
    raw = dataset.raw_frame()
    validation = validate(raw)
    if not validation.ok:
        raise DataValidationError(validation)
    features, labels = to_training_frame(raw)
    data = split(features, labels, params.split)

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    mlflow.set_experiment(params.mlflow.experiment)
    tags = lineage_tags(dataset, params, repo_root)

    outcomes: dict[str, CandidateOutcome] = {}
    for candidate in candidates:
        report(TrainingStage.training, candidate.registered_name)
        model = fit(candidate, data)

        report(TrainingStage.evaluating, candidate.registered_name)
        evaluation = evaluate(model, data.x_test, data.y_test, f"{candidate.registered_name}")

        report(TrainingStage.registering, candidate.registered_name)
        with mlflow.start_run(
            run_name=f"{candidate.key}-{tags['params_hash'][:8]}", tags=tags
        ) as run:
            mlflow.log_params(
                {
                    **candidate.hyperparameters,
                    "model_type": candidate.key,
                    "test_size": params.split.test_size,
                    "split_random_state": params.split.random_state,
                    "train_rows": len(data.x_train),
                    "test_rows": len(data.x_test),
                }
            )
            mlflow.log_metrics(evaluation.metrics)
            mlflow.log_figure(evaluation.confusion_matrix, "confusion_matrix.png")
            plt.close(evaluation.confusion_matrix)
            mlflow.log_text(evaluation.report_text, "classification_report.txt")
            mlflow.log_dict(evaluation.report_dict, "classification_report.json")
            mlflow.log_dict(validation.as_dict(), "data_validation.json")
            signature = infer_signature(data.x_train, model.predict(data.x_train))
            with warnings.catch_warnings():
                # MLflow's own input-example code trips pandas' deprecation warnings.
                warnings.simplefilter("ignore")
                info = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=data.x_train.head(3),
                    registered_model_name=candidate.registered_name,
                    pip_requirements=serving_requirements(),
                    skops_trusted_types=list(candidate.trusted_types) or None,
                )
        version = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(candidate.registered_name, version, key, value)

        outcome = _gate(client, candidate.registered_name, version, model, data, params)
        outcomes[candidate.registered_name] = CandidateOutcome(
            model_name=candidate.registered_name,
            version=version,
            run_id=run.info.run_id,
            metrics=evaluation.metrics,
            gate=outcome.outcome,
            gate_reason=outcome.reason,
            aliases_set=outcome.aliases,
        )
        logger.info(
            "Registered model version",
            extra={"model": candidate.registered_name, "version": version, "gate": outcome.outcome},
        )
    return TrainingResult(data_md5=dataset.md5, rows=dataset.rows, models=outcomes)


def _gate(
    client: MlflowClient,
    name: str,
    version: str,
    model: Any,
    data: Any,
    params: TrainingParams,
) -> registry.GateDecision:
    gate = params.gate
    production = registry.version_by_alias(client, name, registry.PRODUCTION)
    candidate_score = score(model, data.x_test, data.y_test)[gate.metric]
    production_score: float | None = None
    if production is not None:
        # Both models answer the same held-out rows, so the comparison is like for like.
        production_model = registry.load_version(name, str(production.version))
        production_score = score(production_model, data.x_test, data.y_test)[gate.metric]
    decision = registry.decide(
        candidate_score=candidate_score,
        production_score=production_score,
        production_version=str(production.version) if production is not None else None,
        metric=gate.metric,
        tolerance=gate.tolerance,
        floor=gate.floor,
    )
    registry.set_aliases(client, name, version, decision.aliases)
    client.set_model_version_tag(name, version, "gate.outcome", decision.outcome)
    client.set_model_version_tag(name, version, "gate.reason", decision.reason)
    if decision.production_version is not None:
        client.set_model_version_tag(
            name, version, "gate.compared_with", decision.production_version
        )
    return decision


def write_reports(result: TrainingResult, reports_dir: Path) -> Path:
    """Write metrics for `dvc metrics show` (one entry per registered model)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / "metrics.json"
    payload = {name: {**o.metrics, "version": int(o.version)} for name, o in result.models.items()}
    with tempfile.NamedTemporaryFile("w", dir=reports_dir, delete=False, suffix=".tmp") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    Path(handle.name).replace(path)
    return path
