"""Data tests: the validation that stands between a CSV and a training run."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from iris_trainer.dataset import iris_v1_csv
from iris_trainer.pipeline.validation import validate

HEADER = "sepal_length,sepal_width,petal_length,petal_width,species\n"


def frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def test_the_shipped_data_set_is_valid_and_its_duplicates_are_kept() -> None:
    report = validate(frame(iris_v1_csv().decode()))
    assert report.ok, report.summary()
    assert report.rows == 150
    # The classic set repeats a few flowers exactly; policy keeps them and says which.
    assert report.duplicate_rows, "expected the known exact duplicates to be reported"


def test_a_corrupted_file_is_rejected_with_each_row_and_reason() -> None:
    text = (
        HEADER
        + "5.1,3.5,1.4,0.2,Iris-setosa\n"  # line 2: fine
        + "4.9,,1.4,0.2,Iris-setosa\n"  # line 3: missing value
        + "4.7,3.2,1.3,0.2,Iris-unknown\n"  # line 4: unknown species
        + "4.6,-3.1,1.5,0.2,Iris-setosa\n"  # line 5: negative length
        + "5.0,3.6,abc,0.2,Iris-setosa\n"  # line 6: not a number
    )
    report = validate(frame(text))
    assert not report.ok
    found = {(p.line, p.column, p.reason) for p in report.problems}
    assert (3, "sepal_width", "missing value") in found
    assert any(line == 4 and col == "species" and "unknown species" in r for line, col, r in found)
    assert any(
        line == 5 and col == "sepal_width" and "greater than 0" in r for line, col, r in found
    )
    assert (6, "petal_length", "not a number") in found
    assert all(p.line != 2 for p in report.problems)
    summary = report.summary()
    for line in (3, 4, 5, 6):
        assert f"line {line}" in summary


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("nan,3.5,1.4,0.2,Iris-setosa", "not a finite number"),
        ("inf,3.5,1.4,0.2,Iris-setosa", "not a finite number"),
        ("0,3.5,1.4,0.2,Iris-setosa", "greater than 0"),
        ("75,3.5,1.4,0.2,Iris-setosa", "longer than"),
        ("5.1,3.5,1.4,0.2,", "missing value"),
    ],
)
def test_impossible_measurements_are_refused(row: str, reason: str) -> None:
    report = validate(frame(HEADER + row + "\n"))
    assert any(reason in p.reason and p.line == 2 for p in report.problems), report.summary()


def test_a_wrong_header_is_reported_once() -> None:
    report = validate(frame("a,b,c,d,e\n1,2,3,4,Iris-setosa\n"))
    assert len(report.problems) == 1
    assert "header must be" in report.problems[0].reason


def test_same_measurements_with_different_species_contradict_each_other() -> None:
    text = HEADER + "5.1,3.5,1.4,0.2,Iris-setosa\n5.1,3.5,1.4,0.2,Iris-virginica\n"
    report = validate(frame(text))
    assert {p.line for p in report.problems} == {2, 3}
    assert all("different species" in p.reason for p in report.problems)


def test_exact_duplicates_are_allowed_and_listed() -> None:
    text = HEADER + "5.1,3.5,1.4,0.2,Iris-setosa\n5.1,3.5,1.4,0.2,Iris-setosa\n"
    report = validate(frame(text))
    assert report.ok
    assert report.duplicate_rows == [3]
