"""Data validation that runs before any training.

Bad data stops the pipeline with a report naming each row and reason; it never trains on it.

Duplicate policy: rows that repeat another row exactly are kept (different flowers can measure
the same to a millimetre, and the classic data set has such rows) and counted in the report;
rows with the same measurements but a different species contradict each other and are errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from iris_shared.schemas import FEATURE_NAMES, MAX_MEASUREMENT_CM, SPECIES

LABEL = "species"
EXPECTED_COLUMNS = [*FEATURE_NAMES, LABEL]


@dataclass(frozen=True)
class Problem:
    line: int | None
    column: str | None
    value: str | None
    reason: str

    def __str__(self) -> str:
        return self.describe(with_value=True)

    def describe(self, *, with_value: bool) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        what = f", column {self.column}" if self.column else ""
        value = f" (value {self.value!r})" if with_value and self.value is not None else ""
        return f"{where}{what}: {self.reason}{value}"


@dataclass
class ValidationReport:
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    duplicate_rows: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "problems": [p.__dict__ for p in self.problems],
            "duplicate_rows_kept": self.duplicate_rows,
        }

    def summary(self, limit: int = 20, *, with_values: bool = True) -> str:
        """One line per problem; `with_values=False` for messages that leave this machine.

        A file that is not the data set (a `.env`, say) must not be quoted back to whoever
        pointed the pipeline at it, so job errors name line, column and reason only.
        """
        lines = [f"{len(self.problems)} problem(s) in {self.rows} rows:"]
        lines += [f"  - {p.describe(with_value=with_values)}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


class DataValidationError(Exception):
    """The data failed validation; `report` names every offending row (with its values)."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.summary(with_values=False))
        self.report = report


def _file_line(index: int) -> int:
    # Row 0 of the frame is line 2 of the file (line 1 is the header).
    return index + 2


def validate(raw: pd.DataFrame) -> ValidationReport:
    """Check every cell of a frame read with dtype=str; returns the report without raising."""
    report = ValidationReport(rows=len(raw))
    if list(raw.columns) != EXPECTED_COLUMNS:
        report.problems.append(
            Problem(
                1,
                None,
                ",".join(map(str, raw.columns)),
                f"header must be {','.join(EXPECTED_COLUMNS)}",
            )
        )
        return report
    if raw.empty:
        report.problems.append(Problem(None, None, None, "the file has no data rows"))
        return report

    for index, row in raw.iterrows():
        line = _file_line(int(str(index)))
        for column in FEATURE_NAMES:
            text = str(row[column]).strip()
            if text == "":
                report.problems.append(Problem(line, column, None, "missing value"))
                continue
            try:
                value = float(text)
            except ValueError:
                report.problems.append(Problem(line, column, text, "not a number"))
                continue
            if not math.isfinite(value):
                report.problems.append(Problem(line, column, text, "not a finite number"))
            elif value <= 0:
                report.problems.append(
                    Problem(line, column, text, "a length must be greater than 0 cm")
                )
            elif value > MAX_MEASUREMENT_CM:
                report.problems.append(
                    Problem(line, column, text, f"longer than {MAX_MEASUREMENT_CM:g} cm")
                )
        species = str(row[LABEL]).strip()
        if species == "":
            report.problems.append(Problem(line, LABEL, None, "missing value"))
        elif species not in SPECIES:
            report.problems.append(
                Problem(
                    line, LABEL, species, f"unknown species (expected one of {', '.join(SPECIES)})"
                )
            )

    if report.ok:
        _check_duplicates(raw, report)
    return report


def _check_duplicates(raw: pd.DataFrame, report: ValidationReport) -> None:
    features = raw[list(FEATURE_NAMES)].astype(float)
    exact = raw.assign(**{c: features[c] for c in FEATURE_NAMES}).duplicated(keep="first")
    report.duplicate_rows = [_file_line(int(i)) for i in raw.index[exact]]
    labels_per_measurement = (
        raw.assign(**{c: features[c] for c in FEATURE_NAMES})
        .groupby(list(FEATURE_NAMES))[LABEL]
        .transform("nunique")
    )
    for index in raw.index[labels_per_measurement > 1]:
        report.problems.append(
            Problem(
                _file_line(int(index)),
                LABEL,
                str(raw.at[index, LABEL]),
                "same measurements as another row with a different species",
            )
        )


def to_training_frame(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Typed features and labels from a frame that passed validation."""
    features = raw[list(FEATURE_NAMES)].astype("float64")
    labels = raw[LABEL].str.strip()
    return features, labels
