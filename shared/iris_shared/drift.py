"""Input drift: the contract between the trainer, which profiles the training data, and the
predictor, which compares live inputs with that profile.

At training time the trainer logs a `ReferenceProfile` of the training split (per feature:
decile cut points and the share of rows between them) as the run artefact
`REFERENCE_PROFILE_ARTIFACT`. The predictor loads it with the version it serves and compares a
sliding window of live inputs with it: `psi` per feature, exported as
`iris_feature_drift_psi{feature}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import numpy as np
from pydantic import BaseModel, Field

from iris_shared.schemas import FEATURE_NAMES

REFERENCE_PROFILE_ARTIFACT: Final = "reference_profile.json"
PROFILE_BINS: Final = 10
# The usual reading of the population stability index: below 0.1 stable, 0.1 to 0.2 a shift
# worth watching, above 0.2 a shift that changes what the model sees.
PSI_ALERT_THRESHOLD: Final = 0.2
# An empty bin would make PSI infinite; both sides are floored at this share.
_PSI_FLOOR: Final = 1e-4


class FeatureProfile(BaseModel):
    """One feature of the training split: cut points, and the share of rows in each bin."""

    cut_points: list[float] = Field(description="Interior bin edges, ascending (bins - 1).")
    proportions: list[float] = Field(description="Share of training rows in each bin (sum 1).")

    def proportions_of(self, values: np.ndarray) -> np.ndarray:
        """The share of `values` in each of this profile's bins (the outer bins are open)."""
        bins = np.searchsorted(np.asarray(self.cut_points), values, side="right")
        counts = np.bincount(bins, minlength=len(self.proportions)).astype(float)
        return counts / max(len(values), 1)


class ReferenceProfile(BaseModel):
    """What the model was trained on, feature by feature, for drift scores."""

    rows: int
    features: dict[str, FeatureProfile]

    @classmethod
    def of(cls, rows: np.ndarray, bins: int = PROFILE_BINS) -> ReferenceProfile:
        """The profile of a (n, 4) array in FEATURE_NAMES order."""
        features = {}
        for index, name in enumerate(FEATURE_NAMES):
            column = np.asarray(rows[:, index], dtype=float)
            # Quantile cut points; repeated values (a discrete measurement) merge bins.
            cuts = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1]))
            profile = FeatureProfile(cut_points=cuts.tolist(), proportions=[])
            profile.proportions = profile.proportions_of(column).tolist()
            features[name] = profile
        return cls(rows=len(rows), features=features)

    def psi(self, rows: np.ndarray) -> dict[str, float]:
        """The PSI of each feature of `rows` (n, 4) against this profile."""
        return {
            name: psi(self.features[name].proportions, self.features[name].proportions_of(column))
            for name, column in zip(FEATURE_NAMES, np.asarray(rows).T, strict=True)
        }


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected)."""
    e = np.maximum(np.asarray(expected, dtype=float), _PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=float), _PSI_FLOOR)
    value = float(np.sum((a - e) * np.log(a / e)))
    return value if math.isfinite(value) else 0.0
