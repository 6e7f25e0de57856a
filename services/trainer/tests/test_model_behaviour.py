"""Model tests: how the trained candidates behave, beside the code and data tests.

Invariance (a measuring error of a tenth of a millimetre changes no confident answer),
directional expectations (longer, wider petals move a flower from setosa towards virginica)
and minimum functionality (textbook flowers, and the gate's floor on the held-out split).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from iris_shared.schemas import FEATURE_NAMES, SPECIES
from iris_trainer.pipeline.evaluate import score

CANDIDATES = ["logistic_regression", "random_forest"]
CONFIDENT = 0.9
MEASURING_ERROR_CM = 0.01

# Close to each species' mean in Fisher's data, and two flowers from it.
TEXTBOOK_FLOWERS = [
    ((5.0, 3.4, 1.5, 0.2), "Iris-setosa"),
    ((5.1, 3.5, 1.4, 0.2), "Iris-setosa"),
    ((5.9, 2.8, 4.3, 1.3), "Iris-versicolor"),
    ((6.4, 3.2, 4.5, 1.5), "Iris-versicolor"),
    ((6.6, 3.0, 5.6, 2.0), "Iris-virginica"),
    ((7.7, 3.0, 6.1, 2.3), "Iris-virginica"),
]


def frame(rows: Any) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(FEATURE_NAMES))


@pytest.fixture(params=CANDIDATES)
def model(request: pytest.FixtureRequest, trained_candidates: Any) -> Any:
    return trained_candidates.models[request.param]


@pytest.mark.parametrize(("flower", "species"), TEXTBOOK_FLOWERS)
def test_textbook_flowers_are_classified_right(model: Any, flower: Any, species: str) -> None:
    assert model.predict(frame([flower]))[0] == species


def test_held_out_accuracy_reaches_the_gates_floor(model: Any, trained_candidates: Any) -> None:
    data = trained_candidates.data
    metrics = score(model, data.x_test, data.y_test)

    assert metrics["accuracy"] >= trained_candidates.params.gate.floor
    assert metrics[trained_candidates.params.gate.metric] >= trained_candidates.params.gate.floor


@pytest.mark.parametrize("feature", FEATURE_NAMES)
@pytest.mark.parametrize("error_cm", [-MEASURING_ERROR_CM, MEASURING_ERROR_CM])
def test_a_tiny_measuring_error_changes_no_confident_prediction(
    model: Any, trained_candidates: Any, feature: str, error_cm: float
) -> None:
    flowers = pd.concat([trained_candidates.data.x_train, trained_candidates.data.x_test])
    confident = model.predict_proba(flowers).max(axis=1) >= CONFIDENT
    assert confident.sum() > len(flowers) / 3, "too few confident predictions to test"
    shifted = flowers.assign(**{feature: flowers[feature] + error_cm})

    before = model.predict(flowers[confident])
    after = model.predict(shifted[confident])

    assert (before == after).all()


def test_growing_petals_move_a_flower_from_setosa_to_virginica(model: Any) -> None:
    # Sepals held at the data set's mean; petals grow from setosa's size to virginica's.
    steps = 30
    path = frame(
        {
            "sepal_length": 5.8,
            "sepal_width": 3.0,
            "petal_length": np.linspace(1.4, 6.0, steps),
            "petal_width": np.linspace(0.2, 2.2, steps),
        }
    )

    ranks = [SPECIES.index(species) for species in model.predict(path)]
    probabilities = model.predict_proba(path)
    virginica = list(model.classes_).index("Iris-virginica")

    assert ranks[0] == SPECIES.index("Iris-setosa")
    assert ranks[-1] == SPECIES.index("Iris-virginica")
    assert ranks == sorted(ranks), "the species went back as the petals grew"
    assert probabilities[-1, virginica] > probabilities[0, virginica]
