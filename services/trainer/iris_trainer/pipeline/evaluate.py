"""Held-out metrics and the artefacts a reviewer looks at: confusion matrix and report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    f1_score,
    precision_score,
    recall_score,
)

from iris_shared.schemas import SPECIES


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    report_text: str
    report_dict: dict[str, Any]
    confusion_matrix: Figure


def score(model: Any, x_test: pd.DataFrame, y_test: pd.Series) -> dict[str, float]:
    """Held-out metrics of a model (the gate scores production's version with it)."""
    return _metrics(y_test, model.predict(x_test))


def _metrics(y_test: pd.Series, predicted: Any) -> dict[str, float]:
    labels = list(SPECIES)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(
            f1_score(y_test, predicted, average="macro", labels=labels, zero_division=0)
        ),
    }
    precision = precision_score(y_test, predicted, average=None, labels=labels, zero_division=0)
    recall = recall_score(y_test, predicted, average=None, labels=labels, zero_division=0)
    for species, p, r in zip(labels, precision, recall, strict=True):
        metrics[f"precision_{species}"] = float(p)
        metrics[f"recall_{species}"] = float(r)
    return {name: round(value, 6) for name, value in metrics.items()}


def evaluate(model: Any, x_test: pd.DataFrame, y_test: pd.Series, title: str) -> Evaluation:
    """Metrics, report and confusion matrix from one prediction of the held-out rows."""
    predicted = model.predict(x_test)
    labels = list(SPECIES)
    figure, axes = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y_test, predicted, labels=labels, ax=axes, colorbar=False, xticks_rotation=20
    )
    axes.set_title(title)
    figure.tight_layout()
    report = classification_report(
        y_test, predicted, labels=labels, zero_division=0, output_dict=True
    )
    return Evaluation(
        metrics=_metrics(y_test, predicted),
        report_text=str(classification_report(y_test, predicted, labels=labels, zero_division=0)),
        report_dict=dict(report),
        confusion_matrix=figure,
    )
