"""The drift and feedback contracts the trainer, predictor and gateway share."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from iris_shared.drift import PSI_ALERT_THRESHOLD, ReferenceProfile, psi
from iris_shared.feedback import (
    STORED_ROW_BYTES,
    Feedback,
    FeedbackKeys,
    Species,
    StoredPrediction,
)
from iris_shared.schemas import FEATURE_NAMES, SPECIES

RNG = np.random.default_rng(7)
TRAINING = RNG.normal(loc=[5.8, 3.0, 3.8, 1.2], scale=[0.8, 0.4, 1.7, 0.7], size=(500, 4))


def test_the_feedback_species_are_the_predicted_species() -> None:
    assert set(typing.get_args(Species)) == set(SPECIES)


def test_a_profile_has_a_share_per_bin_summing_to_one_for_every_feature() -> None:
    profile = ReferenceProfile.of(TRAINING)

    assert set(profile.features) == set(FEATURE_NAMES)
    for feature in profile.features.values():
        assert len(feature.proportions) == len(feature.cut_points) + 1
        assert sum(feature.proportions) == pytest.approx(1.0)


def test_the_same_distribution_is_stable_and_a_shifted_one_is_not() -> None:
    profile = ReferenceProfile.of(TRAINING)
    same = RNG.normal(loc=[5.8, 3.0, 3.8, 1.2], scale=[0.8, 0.4, 1.7, 0.7], size=(2000, 4))
    # Petals measured a centimetre longer: only that feature moved.
    shifted = same + np.array([0.0, 0.0, 1.0, 0.0])

    stable = profile.psi(same)
    moved = profile.psi(shifted)

    assert max(stable.values()) < 0.1
    assert moved["petal_length"] > PSI_ALERT_THRESHOLD
    assert moved["sepal_length"] < 0.1


@given(
    st.lists(st.floats(0, 1), min_size=2, max_size=12).filter(lambda xs: sum(xs) > 0),
    st.lists(st.floats(0, 1), min_size=2, max_size=12).filter(lambda xs: sum(xs) > 0),
)
def test_psi_is_finite_non_negative_and_zero_only_for_the_same_shares(
    expected: list[float], actual: list[float]
) -> None:
    size = min(len(expected), len(actual))
    e = np.array(expected[:size]) / sum(expected[:size]) if sum(expected[:size]) else None
    a = np.array(actual[:size]) / sum(actual[:size]) if sum(actual[:size]) else None
    if e is None or a is None:
        return
    value = psi(e, a)

    assert np.isfinite(value)
    assert value >= 0
    assert psi(e, e) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "payload",
    [
        {"request_id": "r-1", "actual_species": "Iris-martian"},
        {"request_id": "", "actual_species": "Iris-setosa"},
        {"request_id": "a b", "actual_species": "Iris-setosa"},
        {"request_id": "r-1", "actual_species": "Iris-setosa", "row": -1},
        {"request_id": "r-1", "actual_species": "Iris-setosa", "extra": 1},
    ],
)
def test_malformed_feedback_is_refused(payload: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Feedback.model_validate(payload)


def test_two_deployments_share_no_feedback_key() -> None:
    a, b = FeedbackKeys("stack-a"), FeedbackKeys("stack-b")

    assert a.prediction("r") != b.prediction("r")
    assert a.answered("r", 0) != a.answered("r", 1)
    assert a.outcomes("1") != b.outcomes("1")
    assert a.prediction("r").startswith(a.prediction_prefix)


@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(0, 100, allow_nan=False), min_size=len(FEATURE_NAMES), max_size=4),
            st.sampled_from(SPECIES),
        ),
        max_size=50,
    )
)
def test_a_stored_answer_reads_back_every_row_as_it_was_kept(
    answered: list[tuple[list[float], str]],
) -> None:
    rows = [row for row, _ in answered]
    species = [name for _, name in answered]
    stored = StoredPrediction.from_rows("7", 1_700_000_000.25, rows, species)

    again = StoredPrediction.decode(stored.encode())

    assert again == stored
    assert (again.model_version, again.time, again.row_count) == ("7", 1_700_000_000.25, len(rows))
    assert [again.features(i) for i in range(again.row_count)] == rows
    assert [again.predicted_species(i) for i in range(again.row_count)] == species
    # The numbers are packed, not written as text: 8 bytes a measurement, 1 a species.
    assert len(stored.encode().partition(b"\n")[2]) == len(rows) * (STORED_ROW_BYTES + 1)


@pytest.mark.parametrize(
    "damaged",
    [
        b'{"model_version":"1","time":1.0,"classes":["a"],"row_count":2}\n' + b"\0" * 33,
        b'{"model_version":"1","time":1.0,"classes":["a"],"row_count":1}',
    ],
)
def test_a_stored_answer_of_the_wrong_length_is_refused(damaged: bytes) -> None:
    with pytest.raises(ValueError, match=r"rows|newline"):
        StoredPrediction.decode(damaged)
