"""Scoring a standardised logistic regression with a few numpy operations instead of scikit-learn's.

scikit-learn spends far more per `predict_proba` of a pipeline on checks and wrappers (input
validation, feature names, output containers, per-step dispatch) than on its arithmetic. For
the pipeline the trainer registers by default, `StandardScaler` then a multinomial
`LogisticRegression`, this does that arithmetic with the same operations in the same order:
`(X - mean_) / scale_ @ coef_.T + intercept_`, then the softmax of
`sklearn.utils.extmath.softmax`.

It is only used for a model it gives identical numbers for: `check_linear_scorer` scores probe
rows both ways at load, and the numpy scorer is used only if every probability is equal. Any
other model, or a scikit-learn whose arithmetic differs, is scored by scikit-learn. A model the
numpy scorer was made for that it does not match is not silent: `FastPath.mismatch` says how
far apart they were, and the predictor reports it (log, metric, GET /model), since scoring with
scikit-learn instead makes every request dearer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iris_shared.schemas import FEATURE_NAMES, MAX_MEASUREMENT_CM

Scorer = Callable[[np.ndarray], np.ndarray]

# Rows across the whole accepted range, and one alone: a batch and a single request.
_PROBE = np.random.default_rng(0).uniform(0.01, MAX_MEASUREMENT_CM, (64, len(FEATURE_NAMES)))


@dataclass(frozen=True)
class FastPath:
    """The numpy scorer of a model, if there is one it matches, and why not if it does not."""

    scorer: Scorer | None
    # Set when the model is one the numpy scorer was made for but their numbers differ.
    mismatch: str | None = None


def linear_scorer(model: Any) -> Scorer | None:
    """A numpy scorer equal to `model.predict_proba`, or None when there is none."""
    return check_linear_scorer(model).scorer


def check_linear_scorer(model: Any) -> FastPath:
    """The numpy scorer for `model` if it gives `model.predict_proba`'s numbers exactly."""
    candidate = _candidate(model)
    if candidate is None:
        return FastPath(None)
    for probe in (_PROBE, _PROBE[:1]):
        expected = np.asarray(model.predict_proba(probe), dtype=np.float64)
        got = candidate(probe.copy())
        if not np.array_equal(got, expected):
            if got.shape == expected.shape:
                gap = f"differ by up to {float(np.abs(got - expected).max()):.3g}"
            else:
                gap = f"have shape {got.shape}, not {expected.shape}"
            return FastPath(
                None,
                f"The numpy scorer's probabilities {gap} from scikit-learn's on {len(probe)} "
                "probe rows: scored by scikit-learn (slower).",
            )
    return FastPath(candidate)


def _candidate(model: Any) -> Scorer | None:
    """The numpy arithmetic of a standardised multinomial logistic regression, unchecked."""
    steps = model.steps if isinstance(model, Pipeline) else [(None, model)]
    *scalers, (_, classifier) = steps
    if type(classifier) is not LogisticRegression or len(classifier.classes_) < 3:
        return None
    if len(scalers) > 1 or any(type(step) is not StandardScaler for _, step in scalers):
        return None
    scaler = scalers[0][1] if scalers else None
    mean = scaler.mean_ if scaler is not None and scaler.with_mean else None
    scale = scaler.scale_ if scaler is not None and scaler.with_std else None
    weights = np.ascontiguousarray(classifier.coef_.T, dtype=np.float64)
    intercept = np.asarray(classifier.intercept_, dtype=np.float64)

    def predict_proba(rows: np.ndarray) -> np.ndarray:
        if mean is not None:
            rows = rows - mean
        if scale is not None:
            rows = rows / scale
        scores = rows @ weights
        scores += intercept
        # The ufuncs themselves: `max` and `sum` are Python wrappers around them, which cost
        # more than the arithmetic on one row. A maximum is exact however it is taken: across
        # many rows, one column at a time is cheaper than numpy's reduction along each short
        # row. The sum stays the reduction scikit-learn does, whose order of additions it must
        # keep.
        if len(scores) > 1:
            scores -= functools.reduce(np.maximum, scores.T)[:, np.newaxis]
        else:
            scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= np.add.reduce(scores, axis=1, keepdims=True)
        return scores

    return predict_proba
