"""`iris-mlops`: train, inspect and promote models, and bootstrap the data, from a shell.

iris-mlops data bootstrap        make data/iris.csv match its DVC pointer (offline)
iris-mlops data add-feedback     append the rows labelled through POST /feedback, dvc add + push
iris-mlops validate [CSV]        check a data file; non-zero exit with a report on failure
iris-mlops train                 validate, train, log, register and gate every candidate
iris-mlops models                versions, aliases, key metrics, lineage, live figures
iris-mlops report drift          HTML report: prediction log inputs vs. the training data
iris-mlops promote VERSION       move the `production` alias through the gateway (--model NAME)
iris-mlops bootstrap             MLflow's service users and grants, and a first production model
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import httpx

from iris_shared.feedback import FeedbackKeys
from iris_shared.logging import configure_logging
from iris_shared.registry import DEFAULT_MODEL, VersionTag
from iris_shared.servable import forbid_unpickling
from iris_trainer.config import get_bootstrap_settings, get_settings, get_worker_settings

if TYPE_CHECKING:
    from iris_trainer.feedback import LiveFigures, Rate
    from iris_trainer.pipeline.registry import VersionSummary

PROMOTE_TIMEOUT_S = 30.0


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@click.group(help=__doc__.split("\n\n")[0] if __doc__ else None)
def main() -> None:
    configure_logging("trainer-cli", "WARNING")


@main.group()
def data() -> None:
    """Manage the DVC-tracked data set."""


@data.command("bootstrap")
@click.option(
    "--remote",
    "remote_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of the local DVC remote (default: dvc-storage/ in this checkout).",
)
def data_bootstrap(remote_dir: Path | None) -> None:
    """Make data/iris.csv match data/iris.csv.dvc, regenerating version 1 when needed."""
    from iris_trainer.dataset import BootstrapError, bootstrap

    try:
        click.echo(bootstrap(get_settings().repo_root, remote_dir))
    except BootstrapError as exc:
        _fail(str(exc))


@data.command("add-feedback")
@click.option("--dry-run", is_flag=True, help="Print the rows that would be added; change nothing.")
def data_add_feedback(dry_run: bool) -> None:
    """Append the rows labelled through POST /feedback to data/iris.csv as a new DVC version.

    The rows are validated with the rest of the file as training validates it; after
    `dvc add` and `dvc push` they are removed from Redis (REDIS_URL, JOBS_NAMESPACE). Commit
    data/iris.csv.dvc afterwards to record the version in git.
    """
    from iris_trainer.feedback import FeedbackDataError, add_feedback, redis_client

    settings = get_settings()
    worker = get_worker_settings()
    client = redis_client(worker.broker_url)
    try:
        added = add_feedback(
            settings.repo_root, client, FeedbackKeys(worker.jobs_namespace), dry_run=dry_run
        )
    except FeedbackDataError as exc:
        _fail(str(exc))
    finally:
        client.close()
    if not added.rows:
        click.echo("No labelled rows are waiting: nothing to add.")
        return
    if dry_run:
        click.echo(f"Would add {len(added.rows)} rows to data/iris.csv:")
        for line in added.lines:
            click.echo(f"  {line}")
        click.echo(f"data/iris.csv would have {added.total_rows} rows (validation passed).")
        return
    click.echo(
        f"Added {len(added.rows)} rows to data/iris.csv ({added.total_rows} rows now); "
        f"new md5 {added.md5}, pushed to the DVC remote."
    )
    click.echo("Record it in git: git add data/iris.csv.dvc && git commit", err=True)


@main.command("validate")
@click.argument("csv_path", required=False, type=click.Path(path_type=Path))
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write JSON here.")
def validate_command(csv_path: Path | None, report_path: Path | None) -> None:
    """Validate a data file (default: data/iris.csv)."""
    from iris_trainer.pipeline.data import DataUnavailableError, load_dataset
    from iris_trainer.pipeline.validation import validate

    settings = get_settings()
    try:
        if csv_path is None:
            dataset = load_dataset(settings.repo_root)
        else:
            dataset = load_dataset(csv_path.resolve().parent, csv_path.name)
    except DataUnavailableError as exc:
        _fail(str(exc))
    report = validate(dataset.raw_frame())
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if not report.ok:
        _fail(f"{dataset.source} failed validation\n{report.summary()}")
    kept = len(report.duplicate_rows)
    click.echo(f"{dataset.source}: {report.rows} rows valid ({kept} exact duplicate rows kept)")


@main.command("train")
@click.option(
    "--data-rev", help="Git revision of data/iris.csv to train on (default: working copy)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a parameter, e.g. --set models.random_forest.n_estimators=10.",
)
@click.option(
    "--write-reports/--no-write-reports", default=True, help="Write reports/metrics.json."
)
def train_command(data_rev: str | None, overrides: tuple[str, ...], write_reports: bool) -> None:
    """Validate, train, log to MLflow, register and gate every candidate model."""
    from mlflow.exceptions import MlflowException

    from iris_trainer.pipeline.run import TrainingRefused, train_from_settings
    from iris_trainer.pipeline.run import write_reports as write_metrics

    settings = get_settings()
    try:
        result = train_from_settings(
            settings,
            data_rev=data_rev,
            overrides=_parse_overrides(overrides),
            on_progress=lambda p: click.echo(
                f"[{p.step}/{p.total_steps}] {p.stage.value}"
                + (f" {p.model_name}" if p.model_name else ""),
                err=True,
            ),
        )
    except TrainingRefused as exc:
        if exc.report is not None:
            # Local and trusted: the full report, values included, helps fix the file.
            _fail(f"data failed validation; nothing was trained\n{exc.report.summary()}")
        _fail(str(exc))
    except MlflowException as exc:
        _fail(f"MLflow at {settings.mlflow_tracking_uri} refused the request: {exc}")
    except OSError as exc:
        _fail(f"cannot reach MLflow at {settings.mlflow_tracking_uri}: {exc}")
    for name, outcome in result.models.items():
        aliases = ", ".join(outcome.aliases_set) or "no alias"
        click.echo(
            f"{name} v{outcome.version}: accuracy {outcome.metrics['accuracy']:.4f}, "
            f"f1_macro {outcome.metrics['f1_macro']:.4f}; gate {outcome.gate} ({aliases}): "
            f"{outcome.gate_reason}"
        )
    seconds = ", ".join(f"{stage} {s:.1f}s" for stage, s in result.stage_seconds.items())
    click.echo(f"time per stage: {seconds}", err=True)
    if write_reports:
        write_metrics(result, settings.path(settings.reports_dir))


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return overrides


@main.command("models")
@click.option("--model", "names", multiple=True, help="Only these registered models.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--served-model",
    envvar="PREDICTOR_MODEL_NAME",
    default=DEFAULT_MODEL,
    show_default=True,
    help="The model the predictor serves (PREDICTOR_MODEL_NAME): its versions get the live "
    "figures, which Redis keeps by version number only.",
)
def models_command(names: tuple[str, ...], as_json: bool, served_model: str) -> None:
    """List registered versions with aliases, key metrics, lineage and live figures.

    SHADOW is how often the version, as challenger, agreed with production on live inputs;
    LIVE is its accuracy on the last labelled answers (POST /feedback); both with their
    count, '-' when there is none or Redis cannot be reached.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from iris_trainer.feedback import LiveFigures
    from iris_trainer.pipeline.registry import list_versions

    settings = get_settings()
    try:
        versions = list_versions(MlflowClient(settings.mlflow_tracking_uri), list(names) or None)
    except (MlflowException, OSError) as exc:
        _fail(f"cannot list models from {settings.mlflow_tracking_uri}: {exc}")
    figures = _live_figures([v.version for v in versions if v.name == served_model])

    def live(v: VersionSummary) -> LiveFigures:
        none = LiveFigures(shadow_agreement=None, live_accuracy=None)
        return figures.get(v.version, none) if v.name == served_model else none

    if as_json:
        listing = [
            {
                **v.__dict__,
                "shadow_agreement": _rate_dict(live(v).shadow_agreement),
                "live_accuracy": _rate_dict(live(v).live_accuracy),
            }
            for v in versions
        ]
        click.echo(json.dumps(listing, indent=2))
        return
    if not versions:
        click.echo("No registered models yet: run `iris-mlops train`.")
        return
    click.echo(
        f"{'MODEL':<26}{'VER':>4}  {'ALIASES':<22}{'ACC':>7}{'F1':>7}  "
        f"{'DATA MD5':<10} {'ROWS':>5}  {'COMMIT':<8} {'GATE':<14}{'SHADOW':<14}LIVE"
    )
    nan = float("nan")
    for v in versions:
        click.echo(
            f"{v.name:<26}{v.version:>4}  {','.join(v.aliases) or '-':<22}"
            f"{v.metrics.get('accuracy', nan):>7.3f}{v.metrics.get('f1_macro', nan):>7.3f}  "
            f"{v.tags.get(VersionTag.DATA_MD5, '-')[:8]:<10} "
            f"{v.tags.get(VersionTag.DATA_ROWS, '-'):>5}  "
            f"{v.tags.get(VersionTag.GIT_COMMIT, '-')[:7]:<8} "
            f"{v.tags.get(VersionTag.GATE_OUTCOME, '-'):<14}"
            f"{live(v).shadow_agreement or '-'!s:<14}{live(v).live_accuracy or '-'}"
        )


def _live_figures(versions: list[str]) -> dict[str, LiveFigures]:
    """Shadow agreement and live accuracy by version; empty when Redis cannot be reached, so
    that listing the registry never depends on it."""
    import redis

    from iris_trainer.feedback import live_figures, redis_client

    if not versions:
        return {}
    worker = get_worker_settings()
    client = redis_client(worker.broker_url)
    try:
        return live_figures(client, FeedbackKeys(worker.jobs_namespace), versions)
    except redis.RedisError as exc:
        click.echo(f"note: live figures unavailable, Redis cannot be reached ({exc})", err=True)
        return {}
    finally:
        client.close()


def _rate_dict(rate: Rate | None) -> dict[str, float | int] | None:
    return {"value": rate.value, "count": rate.count} if rate else None


@main.group()
def report() -> None:
    """Reports for people about the served model."""


@report.command("drift")
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="The predictor's prediction log folder (default: PREDICTOR_PREDICTION_LOG_DIR from "
    "the environment or .env, as the running stack set it; else prediction-logs/).",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The HTML report to write (default: drift.html in TRAINER_REPORTS_DIR, reports/).",
)
@click.option("--model-version", help="Only the predictions of this model version.")
@click.option(
    "--data-rev",
    help="Git revision of data/iris.csv to compare with, e.g. the COMMIT `iris-mlops models` "
    "shows for the served version (default: the working copy).",
)
def report_drift(
    log_dir: Path | None, output: Path | None, model_version: str | None, data_rev: str | None
) -> None:
    """Write an HTML report comparing the inputs the predictor answered with the training data."""
    from iris_trainer.drift_report import (
        DriftReportError,
        read_prediction_log,
        training_frame,
        write_drift_report,
    )

    settings = get_settings()
    output = output or settings.path(settings.reports_dir) / "drift.html"
    try:
        live = read_prediction_log(log_dir or settings.prediction_log_dir, model_version)
        reference, source = training_frame(settings.repo_root, data_rev)
        summary = write_drift_report(live, reference, source, output)
    except DriftReportError as exc:
        _fail(str(exc))
    for column in summary.columns:
        verdict = "DRIFT" if column.drifted else "ok"
        click.echo(
            f"{column.column:<14} {column.method:<22} score {column.score:.4f} "
            f"(threshold {column.threshold:g})  {verdict}"
        )
    click.echo(
        f"{summary.current_rows} live rows vs. {summary.reference_rows} training rows; "
        f"drifted: {', '.join(summary.drifted) or 'none'}; report written to {output}"
    )


@main.command("promote")
@click.argument("version")
@click.option("--model", "name", default=DEFAULT_MODEL, show_default=True)
def promote_command(version: str, name: str) -> None:
    """Move the `production` alias of a registered model to VERSION, through the gateway.

    The gateway's POST /promote, behind its bearer token, is the only way to production;
    this command calls it with TRAINER_GATEWAY_URL and API_TOKEN.
    """
    settings = get_settings()
    token = settings.api_token.get_secret_value()
    if not token:
        _fail("API_TOKEN is not set (environment or .env): the gateway requires it to promote")
    url = f"{settings.gateway_url}/promote"
    try:
        response = httpx.post(
            url,
            json={"model_name": name, "model_version": version},
            headers={"Authorization": f"Bearer {token}"},
            timeout=PROMOTE_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the gateway at {settings.gateway_url}: {exc}")
    if response.status_code == 401:
        _fail(f"the gateway at {settings.gateway_url} refused API_TOKEN (401)")
    if response.status_code != 200:
        _fail(f"the gateway answered {response.status_code}: {_error_message(response)}")
    previous = response.json().get("previous_version")
    was = f" (was v{previous})" if previous else ""
    click.echo(f"{name}: production -> v{version}{was}")


@main.command("bootstrap")
def bootstrap_command() -> None:
    """Make the registry ready to serve; safe to run on every start (compose, Kubernetes Job).

    Waits for MLflow (TRAINER_BOOTSTRAP_WAIT_S). When MLflow requires credentials, creates the
    users trainer, gateway and predictor with the passwords in SECRETS_DIR (mlflow_admin_password,
    mlflow_trainer_password, mlflow_gateway_password, mlflow_predictor_password) and gives each
    its grants. Trains, as the trainer, when a registered model has no `production` version.
    Exit codes: 0 the registry serves, 1 it does not (MLflow refused, training failed),
    2 credentials missing or wrong, 3 MLflow did not answer.
    """
    from iris_trainer.bootstrap import BootstrapFailed, run

    try:
        run(get_settings(), get_bootstrap_settings(), click.echo)
    except BootstrapFailed as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def run() -> None:
    """The `iris-mlops` command. A process of its own: MLflow's model loaders are switched off
    in it (iris_shared.servable) before any command imports MLflow, as in every service."""
    forbid_unpickling()
    main()
