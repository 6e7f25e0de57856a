"""MLflow's scoring bodies in their plain shapes (a CSV of a header and plain numbers, a
`dataframe_split` of names and numbers) are read by a faster way than any other body; both
ways must give the same rows, or the same refusal, for every body."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from iris_predictor.inputs import InvalidRows
from iris_predictor.routes.mlflow_scoring import (
    BadRequest,
    plain_csv,
    plain_records,
    plain_split,
    rows_from_any_csv,
    rows_from_any_json,
    rows_from_csv,
    rows_from_json,
)
from iris_shared.schemas import FEATURE_NAMES

HEADER = ",".join(FEATURE_NAMES)
MAX_ROWS = 100


def outcome(read: object, body: bytes) -> object:
    try:
        return read(body, MAX_ROWS).tobytes()  # type: ignore[operator]
    except (BadRequest, InvalidRows) as refused:
        return f"{type(refused).__name__}: {refused}"


plain_numbers = st.one_of(
    st.floats(min_value=0.001, max_value=60).map(repr),
    st.floats(min_value=0.001, max_value=60).map(lambda v: f"{v:.2f}"),
    st.floats(min_value=0.001, max_value=60).map(lambda v: f"{v:.4E}"),
    st.integers(min_value=-3, max_value=60).map(str),
    st.sampled_from(["1e999", " 2 ", "7E-1"]),
)
numbers = st.one_of(
    plain_numbers,
    # What a plain body must not be read as, and what it may hold by mistake.
    st.sampled_from(["nan", "inf", ".5", "5.", "+1", "", "1 2", "0x10", "1e", "e", "-"]),
    st.sampled_from(["-0", "0.0", "-1.5"]),
    st.sampled_from(['"1.5"', "1],[2", "[1", "1\r", "٣", "1,2"]),
)
rows = st.one_of(
    st.lists(st.lists(plain_numbers, min_size=4, max_size=4), min_size=1, max_size=6),
    st.lists(st.lists(numbers, min_size=3, max_size=5), min_size=1, max_size=6),
)
headers = st.one_of(
    st.sampled_from([HEADER, ",".join(reversed(FEATURE_NAMES))]),
    st.sampled_from(["," + HEADER, f'"{FEATURE_NAMES[0]}"', "a,b,c,d"]),
)
endings = st.one_of(st.sampled_from(["", "\n"]), st.sampled_from(["\n\n", "\r\n"]))


@settings(max_examples=400, deadline=None)
@given(header=headers, table=rows, ending=endings, blank=st.sampled_from([False, False, True]))
def test_both_ways_read_every_body_alike(
    header: str, table: list[list[str]], ending: str, blank: bool
) -> None:
    lines = [header] + [",".join(row) for row in table]
    if blank:
        lines.insert(2, "")
    body = ("\n".join(lines) + ending).encode()
    event("plain" if plain_csv(body) is not None else "general")
    assert outcome(rows_from_csv, body) == outcome(rows_from_any_csv, body)


def test_what_pandas_writes_without_its_index_is_plain() -> None:
    frame = pd.DataFrame(
        np.random.default_rng(0).uniform(0.1, 8, (1000, 4)), columns=list(FEATURE_NAMES)
    )
    body = frame.to_csv(index=False).encode()
    assert plain_csv(body) is not None
    np.testing.assert_array_equal(rows_from_csv(body, 1000), frame.to_numpy())


@pytest.mark.parametrize(
    "body",
    [
        # Two JSON rows out of one line of seven fields: the brackets are not let through.
        f"{HEADER}\n1,2,3,4],[5,6,7,8\n",
        f"{HEADER}\r\n1,2,3,4\r\n",
        f'{HEADER}\n"1",2,3,4\n',
        f",{HEADER}\n0,1,2,3,4\n",
        f"{HEADER}\n1,2,3,4\n\n5,6,7,8\n",
        f"{HEADER}\n1,2,3,4,\n",
        f"{HEADER}\n1,2,3\n4,5,6,7,8\n",
    ],
)
def test_anything_but_a_plain_csv_takes_the_general_way(body: str) -> None:
    assert plain_csv(body.encode()) is None


json_values = st.one_of(
    st.floats(min_value=0.001, max_value=60),
    st.integers(min_value=-2, max_value=60),
    st.sampled_from([-0.0, 0.0, 10**20, 10**400, 1e308, True, False, None, "5.1", [5.1]]),
    st.floats(allow_nan=False, allow_infinity=False),
)
plain_values = st.one_of(st.floats(min_value=0.001, max_value=60), st.integers(1, 60))
split_columns = st.one_of(
    st.sampled_from([list(FEATURE_NAMES), list(reversed(FEATURE_NAMES))]),
    st.sampled_from([list(FEATURE_NAMES[:3]), [*FEATURE_NAMES, "extra"], [1, 2, 3, 4], []]),
)
split_rows = st.one_of(
    st.lists(st.lists(plain_values, min_size=4, max_size=4), min_size=0, max_size=6),
    st.lists(st.lists(json_values, min_size=3, max_size=5), min_size=1, max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(
    columns=split_columns,
    data=split_rows,
    index=st.booleans(),
    extra=st.sampled_from([None, None, None, "instances", "dataframe_records"]),
)
def test_both_ways_read_every_dataframe_split_alike(
    columns: list[Any], data: list[list[Any]], index: bool, extra: str | None
) -> None:
    frame: dict[str, Any] = {"columns": columns, "data": data}
    if index:
        frame["index"] = list(range(len(data)))
    document: dict[str, Any] = {"dataframe_split": frame}
    if extra:
        document[extra] = data
    body = json.dumps(document).encode()
    event("plain" if plain_split(body) is not None else "general")
    assert outcome(rows_from_json, body) == outcome(rows_from_any_json, body)


def test_what_mlflows_client_sends_for_a_frame_is_plain() -> None:
    frame = pd.DataFrame(
        np.random.default_rng(0).uniform(0.1, 8, (1000, 4)), columns=list(FEATURE_NAMES)
    )
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split")}).encode()
    assert plain_split(body) is not None
    np.testing.assert_array_equal(rows_from_json(body, 1000), frame.to_numpy())


in_bounds = st.one_of(st.floats(min_value=0.001, max_value=50), st.integers(1, 50))
record_keys = st.one_of(
    st.permutations(FEATURE_NAMES).map(list),
    st.sampled_from([list(FEATURE_NAMES[:3]), [*FEATURE_NAMES, "extra"], ["a", "b", "c", "d"]]),
)


@st.composite
def records(draw: st.DrawFn) -> list[Any]:
    plain = draw(st.booleans())
    keys = draw(st.permutations(FEATURE_NAMES) if plain else record_keys)
    values = in_bounds if plain else json_values
    rows = draw(st.lists(st.lists(values, min_size=4, max_size=5), max_size=6))
    return [dict(zip(keys, row, strict=False)) for row in rows]


@settings(max_examples=400, deadline=None)
@given(
    key=st.sampled_from(["dataframe_records", "instances", "inputs"]),
    data=st.one_of(records(), split_rows),
    extra=st.sampled_from([None, None, None, "dataframe_split", "instances", "dataframe_records"]),
    extra_value=st.sampled_from([None, [], {"columns": FEATURE_NAMES, "data": [[1, 2, 3, 4]]}]),
)
def test_both_ways_read_every_body_of_records_alike(
    key: str, data: list[Any], extra: str | None, extra_value: Any
) -> None:
    document: dict[str, Any] = {key: data}
    if extra and extra != key:
        document[extra] = extra_value
    body = json.dumps(document).encode()
    event("plain" if plain_records(body, MAX_ROWS) is not None else "general")
    assert outcome(rows_from_json, body) == outcome(rows_from_any_json, body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"\xff": 1}',
        b'{"dataframe_records": [{"\xff": 1}]}',
        b'{"dataframe_split": {"columns": ["\xff"], "data": [[1]]}}',
    ],
)
def test_bytes_that_are_not_utf8_in_a_key_are_a_bad_request(body: bytes) -> None:
    assert outcome(rows_from_json, body) == (
        "BadRequest: Ensure that input is a valid JSON formatted string."
    )


def test_one_record_by_name_in_any_order_is_plain() -> None:
    record = dict(zip(reversed(FEATURE_NAMES), [0.2, 1.4, 3.5, 5.1], strict=True))
    body = json.dumps({"dataframe_records": [record]}).encode()
    assert plain_records(body, MAX_ROWS) is not None
    np.testing.assert_array_equal(rows_from_json(body, MAX_ROWS), [[5.1, 3.5, 1.4, 0.2]])
