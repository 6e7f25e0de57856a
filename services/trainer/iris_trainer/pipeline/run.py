"""The whole pipeline: `train_from_settings` for the CLI and the task, `run_training` under it.

Expected failures (parameters, data that cannot be read or fails validation, a production
version the gate cannot load safely) come out as one exception, `TrainingRefused`, whose
message is safe to show to whoever asked for the run; anything else (MLflow unreachable, a bug)
propagates unchanged for the caller to retry or report.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import mlflow.sklearn
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature

from iris_shared.drift import REFERENCE_PROFILE_ARTIFACT, ReferenceProfile
from iris_shared.jobs import CandidateOutcome, JobProgress, TrainingResult, TrainingStage
from iris_shared.model_files import UnsafeModelError
from iris_shared.registry import PRODUCTION, VersionTag
from iris_shared.schemas import FEATURE_NAMES
from iris_trainer.config import TrainerSettings
from iris_trainer.pipeline import registry
from iris_trainer.pipeline.data import (
    Dataset,
    DataUnavailableError,
    dvc_recorded_md5,
    git_commit,
    git_resolve,
    load_dataset,
)
from iris_trainer.pipeline.evaluate import Evaluation, evaluate, score
from iris_trainer.pipeline.params import InvalidParamsError, TrainingParams, load_params
from iris_trainer.pipeline.train import Candidate, Split, build_candidates, fit, split
from iris_trainer.pipeline.validation import (
    DataValidationError,
    Problem,
    ValidationReport,
    to_training_frame,
    validate,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[JobProgress], None]


class TrainingRefused(Exception):
    """The run cannot succeed, and retrying cannot help: the parameters or the data are wrong
    (nothing was trained), or production's version cannot be loaded safely to gate against.

    The message names lines, columns and reasons but never quotes the data, so it can go back
    to a remote caller; `report`, when the data failed validation, holds the values as well.
    """

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def train_from_settings(
    settings: TrainerSettings,
    *,
    data_rev: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainingResult:
    """Load params.yaml with `overrides` merged in, then train, register and gate."""
    try:
        params = load_params(settings.path(settings.params_file), overrides)
        return run_training(
            params,
            settings.repo_root,
            data_rev=data_rev,
            tracking_uri=settings.mlflow_tracking_uri,
            job_id=job_id,
            on_progress=on_progress,
        )
    except DataValidationError as exc:
        raise TrainingRefused(
            f"The data failed validation; nothing was trained. {exc}", exc.report
        ) from exc
    except (InvalidParamsError, DataUnavailableError) as exc:
        raise TrainingRefused(str(exc)) from exc


def serving_requirements() -> list[str]:
    """Pin what the model needs to load, exactly as trained.

    Stated rather than inferred: inference exports the whole workspace lock (170 packages)
    and takes seconds per model.
    """
    import numpy
    import sklearn

    return [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={numpy.__version__}",
    ]


def lineage_tags(dataset: Dataset, params: TrainingParams, repo_root: Path) -> dict[str, str]:
    recorded = dvc_recorded_md5(repo_root, params.data.path)
    commit = git_resolve(repo_root, dataset.rev) if dataset.rev else git_commit(repo_root)
    tracked = dataset.rev is not None or recorded == dataset.md5
    return {
        VersionTag.DATA_MD5: dataset.md5,
        VersionTag.DATA_ROWS: str(dataset.rows),
        VersionTag.DATA_SOURCE: dataset.source,
        # The working copy can differ from what `dvc add` recorded: say so rather than guess.
        VersionTag.DATA_DVC_TRACKED: str(tracked).lower(),
        VersionTag.GIT_COMMIT: commit,
        VersionTag.PARAMS_HASH: params.fingerprint(),
    }


class _Stages:
    """Reports each stage as it starts and adds up the seconds spent in each."""

    def __init__(self, total_steps: int, on_progress: ProgressCallback | None) -> None:
        self.total_steps = total_steps
        self.on_progress = on_progress
        self.started_at = datetime.now(UTC)
        self.step = 0
        self.seconds: dict[str, float] = {}
        self._current: tuple[TrainingStage, float] | None = None

    def start(self, stage: TrainingStage, model_name: str | None = None) -> None:
        self.stop()
        self.step += 1
        if self.on_progress is not None:
            self.on_progress(
                JobProgress(
                    stage=stage,
                    model_name=model_name,
                    step=self.step,
                    total_steps=self.total_steps,
                    started_at=self.started_at,
                )
            )
        # Timed after the report: the time a progress update takes is not the stage's.
        self._current = (stage, time.perf_counter())

    def stop(self) -> None:
        if self._current is not None:
            stage, started = self._current
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
            self._current = None

    def totals(self) -> dict[str, float]:
        self.stop()
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}


def run_training(
    params: TrainingParams,
    repo_root: Path,
    *,
    data_rev: str | None = None,
    tracking_uri: str | None = None,
    job_id: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> TrainingResult:
    """Validate the data, train every candidate, log it to MLflow, register it and gate it.

    With a `job_id`, each version is tagged with it, and a version this job registered on an
    earlier attempt is reused instead of trained and registered again.
    """
    candidates = build_candidates(params)
    client = MlflowClient(tracking_uri)
    registered: dict[str, ModelVersion] = {}
    if job_id is not None:
        for candidate in candidates:
            earlier = registry.version_for_job(client, candidate.registered_name, job_id)
            if earlier is not None:
                registered[candidate.registered_name] = earlier
    # Reused versions only go through the registering stage.
    stages = _Stages(
        2 + sum(1 if c.registered_name in registered else 3 for c in candidates), on_progress
    )

    stages.start(TrainingStage.loading_data)
    dataset = load_dataset(repo_root, params.data.path, data_rev)

    stages.start(TrainingStage.validating)
    data, validation = validated_split(dataset, params)

    # Set only now, so that data which fails validation leaves MLflow's global state alone.
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(params.mlflow.experiment)
    tags = lineage_tags(dataset, params, repo_root)
    if job_id is not None:
        tags[VersionTag.JOB_ID] = job_id

    outcomes: dict[str, CandidateOutcome] = {}
    for candidate in candidates:
        name = candidate.registered_name
        earlier = registered.get(name)
        if earlier is None:
            stages.start(TrainingStage.training, name)
            model = fit(candidate, data)
            stages.start(TrainingStage.evaluating, name)
            evaluation = evaluate(model, data.x_test, data.y_test, name)
            stages.start(TrainingStage.registering, name)
            version = _log_and_register(
                client, candidate, model, evaluation, validation, data, params, tags
            )
            metrics = evaluation.metrics
        else:
            stages.start(TrainingStage.registering, name)
            version = earlier
            metrics = dict(client.get_run(str(version.run_id)).data.metrics)
            logger.info(
                "Reusing the version this job registered before",
                extra={"model": name, "version": version.version, "job_id": job_id},
            )
        decision = registry.recorded_decision(version) or _gate(
            client, name, str(version.version), metrics[params.gate.metric], data, params
        )
        outcomes[name] = CandidateOutcome(
            model_name=name,
            version=str(version.version),
            run_id=str(version.run_id),
            metrics=metrics,
            gate=decision.outcome.value,
            gate_reason=decision.reason,
            aliases_set=decision.aliases,
        )
        logger.info(
            "Registered model version",
            extra={"model": name, "version": version.version, "gate": decision.outcome},
        )
    return TrainingResult(
        data_md5=dataset.md5, rows=dataset.rows, models=outcomes, stage_seconds=stages.totals()
    )


def validated_split(dataset: Dataset, params: TrainingParams) -> tuple[Split, ValidationReport]:
    """The train/test split of data that passed validation, and the validation report."""
    try:
        raw = dataset.raw_frame()
    except pd.errors.ParserError as exc:
        # pandas names the line and the field counts, never the cells.
        raise DataValidationError(
            ValidationReport(problems=[Problem(None, None, None, f"not a CSV table: {exc}")])
        ) from exc
    validation = validate(raw)
    if not validation.ok:
        raise DataValidationError(validation)
    features, labels = to_training_frame(raw)
    return split(features, labels, params.split), validation


# Warnings MLflow's log_model gives on every run that cannot apply here: the logger, and what
# its message says.
_INAPPLICABLE_WARNINGS = {
    # Its check of the input example loads the model back with MLflow's own loader, which every
    # service process switches off (iris_shared.servable.forbid_unpickling); the predictor
    # checks each version with its own loader when it loads it.
    "mlflow.models.model": "Deserializing this model is disallowed",
    # The environments are made by uv, without pip; the model's requirements are given in full
    # (`pip_requirements`), and nothing here reads the conda.yaml the warning is about.
    "mlflow.utils.environment": "Failed to resolve installed pip version",
}


class _Drop(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def _without_inapplicable_warnings() -> Iterator[None]:
    filters = [
        (logging.getLogger(name), _Drop(text)) for name, text in _INAPPLICABLE_WARNINGS.items()
    ]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


def _log_and_register(
    client: MlflowClient,
    candidate: Candidate,
    model: Any,
    evaluation: Evaluation,
    validation: ValidationReport,
    data: Split,
    params: TrainingParams,
    tags: dict[str, str],
) -> ModelVersion:
    with mlflow.start_run(
        run_name=f"{candidate.key}-{tags[VersionTag.PARAMS_HASH][:8]}", tags=tags
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
        # What the predictor compares live inputs with (iris_shared.feedback).
        profile = ReferenceProfile.of(data.x_train[list(FEATURE_NAMES)].to_numpy(dtype=float))
        mlflow.log_dict(profile.model_dump(), REFERENCE_PROFILE_ARTIFACT)
        signature = infer_signature(data.x_train, model.predict(data.x_train))
        with warnings.catch_warnings(), _without_inapplicable_warnings():
            # MLflow's own input-example code trips pandas' deprecation warnings.
            warnings.simplefilter("ignore")
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=signature,
                input_example=data.x_train.head(3),
                pip_requirements=serving_requirements(),
                skops_trusted_types=list(candidate.trusted_types) or None,
            )
    return registry.register_version(
        client,
        candidate.registered_name,
        model_uri=info.model_uri,
        model_id=info.model_id,
        run_id=run.info.run_id,
        tags=tags,
    )


def _gate(
    client: MlflowClient,
    name: str,
    version: str,
    candidate_score: float,
    data: Split,
    params: TrainingParams,
) -> registry.GateDecision:
    gate = params.gate
    production = registry.version_by_alias(client, name, PRODUCTION)
    if production is not None and str(production.version) == version:
        # An earlier attempt of this job made it the first production version, then stopped
        # before recording the outcome; comparing it with itself would call it a challenger.
        production = None
    production_score: float | None = None
    if production is not None:
        # Both models answer the same held-out rows, so the comparison is like for like.
        try:
            production_model = registry.load_version(name, str(production.version))
        except UnsafeModelError as exc:
            # Whoever can write to the registry wrote it: no retry can make it safe, and no
            # candidate may be judged against it (or take over from it) unseen. The traceback
            # carries the details the message leaves out.
            logger.warning(
                "Production version cannot be loaded safely; nothing gated",
                exc_info=True,
                extra={"model": name, "version": production.version, "candidate": version},
            )
            raise TrainingRefused(
                f"production version {production.version} of {name} cannot be loaded safely: "
                f"{exc.reason}. Version {version} was registered but not gated (no alias); "
                "point production at a servable version and retrain."
            ) from exc
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
    if decision.production_version is not None:
        client.set_model_version_tag(
            name, version, VersionTag.GATE_COMPARED_WITH, decision.production_version
        )
    client.set_model_version_tag(name, version, VersionTag.GATE_REASON, decision.reason)
    # Written last: its presence tells a later attempt that the whole decision was recorded.
    client.set_model_version_tag(name, version, VersionTag.GATE_OUTCOME, decision.outcome)
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
