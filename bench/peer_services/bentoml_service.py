"""The BentoML peer of `make bench`: BentoML's own iris example (a joblib model behind one
`@bentoml.api` taking a numpy array), 2 workers. It runs in the peer's own venv
(bench/servers.py) and imports nothing of this repository; IRIS_BENCH_MODEL names the model.
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
