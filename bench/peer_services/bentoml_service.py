"""The BentoML peer of `make bench`: BentoML's own iris example (a joblib model behind one
`@bentoml.api` taking a numpy array), with 2 workers like the predictor and
`mlflow models serve -w 2`.

Runs in the peer's own virtual environment (bench/servers.py), never in the project's: it imports
nothing from this repository. IRIS_BENCH_MODEL names the joblib file exported from the
registry's production version.
"""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


@bentoml.service(workers=2)
class IrisClassifier:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["IRIS_BENCH_MODEL"])

    @bentoml.api
    def classify(self, input_series: np.ndarray) -> np.ndarray:
        return self.model.predict(input_series)
