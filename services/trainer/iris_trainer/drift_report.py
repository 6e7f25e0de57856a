"""The drift report: what the service was asked lately against what the model was trained on.

`iris-mlops report drift` reads the predictor's prediction log (JSON lines, one line per
answered request, every rotated file included), takes the measurements of every row, and
compares them with the training data (data/iris.csv of the checkout, or of the git revision
a version was trained on) with Evidently's `DataDriftPreset`: one drift test per feature
(Kolmogorov-Smirnov on small samples, a distance on large ones), plus the predicted species
against the training labels. The result is one self-contained HTML page for a person; the
predictor's `iris_feature_drift_psi` gauges are the same question asked continuously.

The log's format and file names are the predictor's (`iris_predictor.recorder`,
`iris_predictor.prediction_log`); they are restated here because services never import each
other's code.
"""

from __future__ import annotations

import html
import json
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pandas as pd

from iris_shared.schemas import FEATURE_NAMES
from iris_trainer.pipeline.data import DataUnavailableError, load_dataset
from iris_trainer.pipeline.validation import LABEL

logger = logging.getLogger(__name__)

# iris_predictor.prediction_log.LOG_GLOB: predictions.jsonl, predictions-1.jsonl (one per
# server process), and their rotated backups predictions.jsonl.1, ...
LOG_GLOB: Final = "predictions*.jsonl*"
REPORT_TITLE: Final = "iris-mlops: input drift, live vs. training"


class DriftReportError(Exception):
    """The report cannot be made (no log, no predictions, no training data)."""


@dataclass
class LiveInputs:
    """The rows of the prediction log, in FEATURE_NAMES order plus the predicted species."""

    frame: pd.DataFrame
    versions: Counter[str] = field(default_factory=Counter)
    files: int = 0
    unreadable_lines: int = 0


def log_files(log_dir: Path) -> list[Path]:
    return sorted(path for path in log_dir.glob(LOG_GLOB) if path.is_file())


def read_prediction_log(log_dir: Path, model_version: str | None = None) -> LiveInputs:
    """Every row the predictor logged in `log_dir` (only `model_version`'s, when given)."""
    files = log_files(log_dir)
    if not files:
        raise DriftReportError(
            f"no prediction log in {log_dir} (files {LOG_GLOB}); set --log-dir to the "
            "predictor's PREDICTOR_PREDICTION_LOG_DIR"
        )
    columns: dict[str, list[Any]] = {name: [] for name in (*FEATURE_NAMES, LABEL)}
    live = LiveInputs(frame=pd.DataFrame())
    live.files = len(files)
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                record = _record(line)
                if record is None:
                    # A line cut short by a crash or a rotation; the rest of the file is fine.
                    live.unreadable_lines += 1
                    continue
                version, inputs, predicted = record
                if model_version is not None and version != model_version:
                    continue
                live.versions[version] += len(predicted)
                for name in FEATURE_NAMES:
                    columns[name].extend(inputs[name])
                columns[LABEL].extend(predicted)
    if not columns[LABEL]:
        which = f" of model version {model_version}" if model_version else ""
        raise DriftReportError(f"no predictions{which} in the log in {log_dir}")
    live.frame = pd.DataFrame(columns).astype({name: "float64" for name in FEATURE_NAMES})
    return live


def _record(line: str) -> tuple[str, dict[str, list[float]], list[str]] | None:
    """(model version, inputs by feature, predicted species) of one log line, or None."""
    try:
        document = json.loads(line)
        version = str(document["model_version"])
        inputs = {name: [float(v) for v in document["inputs"][name]] for name in FEATURE_NAMES}
        predicted = [str(species) for species in document["predicted_species"]]
    except (ValueError, KeyError, TypeError):
        return None
    if any(len(values) != len(predicted) for values in inputs.values()):
        return None
    return version, inputs, predicted


def training_frame(repo_root: Path, rev: str | None = None) -> tuple[pd.DataFrame, str]:
    """The training data (working copy, or `rev`) as floats plus its labels, and its source."""
    try:
        dataset = load_dataset(repo_root, rev=rev)
        raw = dataset.raw_frame()
        frame = raw[[*FEATURE_NAMES, LABEL]].astype({name: "float64" for name in FEATURE_NAMES})
    except DataUnavailableError as exc:
        raise DriftReportError(str(exc)) from exc
    except (KeyError, ValueError) as exc:
        raise DriftReportError(
            f"{dataset.source} is not valid training data; run `iris-mlops validate`"
        ) from exc
    return frame, f"{dataset.source} (md5 {dataset.md5})"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    output: Path
    current_rows: int
    reference_rows: int
    columns: list[ColumnDrift]

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def write_drift_report(
    live: LiveInputs, reference: pd.DataFrame, reference_source: str, output: Path
) -> DriftSummary:
    """Compare the live rows with the reference, write the HTML page, summarise the result."""
    with _quiet_evidently():
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(
            numerical_columns=list(FEATURE_NAMES), categorical_columns=[LABEL]
        )
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            current_data=Dataset.from_pandas(live.frame, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
        page = snapshot.get_html_str(as_iframe=False)
        result = snapshot.dict()
    summary = DriftSummary(output, len(live.frame), len(reference), _column_drift(result))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_with_header(page, live, reference_source, summary), encoding="utf-8")
    return summary


def _column_drift(result: dict[str, Any]) -> list[ColumnDrift]:
    drifted_by_metric = {
        test["metric_config"]["metric_id"]: test["status"] == "FAIL"
        for test in result.get("tests", [])
        if test.get("metric_config", {}).get("params", {}).get("type", "").endswith("ValueDrift")
    }
    columns = []
    for metric in result["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        columns.append(
            ColumnDrift(
                column=str(config["column"]),
                method=str(config["method"]),
                score=float(metric["value"]),
                threshold=float(config["threshold"]),
                drifted=drifted_by_metric.get(metric["id"], False),
            )
        )
    return columns


def _with_header(page: str, live: LiveInputs, reference_source: str, summary: DriftSummary) -> str:
    """Evidently's page, with what was compared with what written above it."""
    versions = ", ".join(f"v{v} ({n} rows)" for v, n in sorted(live.versions.items()))
    drifted = ", ".join(summary.drifted) or "none"
    facts = [
        ("Generated", datetime.now(UTC).isoformat(timespec="seconds")),
        ("Live inputs", f"{summary.current_rows} rows from {live.files} log file(s): {versions}"),
        ("Training data", f"{summary.reference_rows} rows of {reference_source}"),
        ("Drifted columns", drifted),
        ("Note", f"'{LABEL}' is the predicted species live and the true one in training."),
    ]
    if live.unreadable_lines:
        facts.append(("Skipped", f"{live.unreadable_lines} unreadable log line(s)"))
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td>{html.escape(v)}</td></tr>"
        for k, v in facts
    )
    header = (
        "<div style='font-family:sans-serif;margin:1em'>"
        f"<h1>{html.escape(REPORT_TITLE)}</h1>"
        f"<table>{rows}</table></div>"
    )
    # Evidently's page has no title of its own: the browser's tab would show the file name.
    page = page.replace("<head>", f"<head><title>{html.escape(REPORT_TITLE)}</title>", 1)
    if "<body>" in page:
        return page.replace("<body>", f"<body>{header}", 1)
    return header + page


@contextmanager
def _quiet_evidently() -> Iterator[None]:
    """Run Evidently without its own noise.

    Its deprecation warnings about pandas, and numpy's about a column that is constant in the
    sample (a divide by zero in its plots), are its own, and silenced here only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
