"""A V2 inference request in its plain shape (one flat tensor of numbers, no parameters, the
outputs left to the server) is read by a faster way than any other request; both ways must
give the same rows and the same echoed id, and the faster one must take nothing the general
one refuses."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from iris_predictor.routes.open_inference import V2Error, _plain, _rows, _split_body
from iris_shared.schemas import FEATURE_NAMES, MAX_MEASUREMENT_CM

MAX_ROWS = 20
WIDTH = len(FEATURE_NAMES)


def general(body: bytes) -> tuple[bytes, Any] | str:
    """What the general way makes of `body`: the rows and the id, or its refusal."""
    try:
        document, binary = _split_body(SimpleNamespace(headers={}), body)  # type: ignore[arg-type]
        return _rows(document, binary, MAX_ROWS).tobytes(), document.get("id")
    except V2Error as refused:
        return f"{refused.status_code}: {refused.message}"
    except Exception as refused:  # checked_rows' own refusals, worded by the route
        return f"{type(refused).__name__}: {refused}"


odd_values = st.one_of(
    st.integers(min_value=-2, max_value=52),
    st.sampled_from([0, 0.0, -1.5, 50.000001, 1e308, 10**400, True, "1.5", None]),
)
measurements = st.floats(min_value=0, max_value=MAX_MEASUREMENT_CM, exclude_min=True)
MUTATIONS = [
    None, "odd value", "nested", "rows", "width", "shape", "datatype", "parameters",
    "two inputs", "id", "outputs", "request parameters", "unknown field",
]  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A plain request, or one changed in one way that may or may not keep it plain."""
    n = draw(st.integers(min_value=1, max_value=MAX_ROWS))
    width = WIDTH
    flat: list[Any] = draw(st.lists(measurements, min_size=n * WIDTH, max_size=n * WIDTH))
    tensor: dict[str, Any] = {"name": "input-0", "shape": [n, width], "datatype": "FP64"}
    request: dict[str, Any] = {"inputs": [tensor]}
    mutation = draw(st.sampled_from(MUTATIONS))
    event(f"mutation: {mutation}")
    if mutation == "odd value":
        flat[draw(st.integers(0, len(flat) - 1))] = draw(odd_values)
    elif mutation == "nested":
        tensor["shape"] = [n, width]
        flat = [flat[i : i + width] for i in range(0, len(flat), width)]
    elif mutation == "rows":
        tensor["shape"] = [draw(st.sampled_from([0, n + 1, MAX_ROWS + 1])), width]
    elif mutation == "width":
        tensor["shape"] = [n, draw(st.sampled_from([3, 5]))]
    elif mutation == "shape":
        tensor["shape"] = draw(st.sampled_from([[n * width], [n, width, 1], [n, -width]]))
    elif mutation == "datatype":
        tensor["datatype"] = draw(st.sampled_from(["FP32", "INT64", "BYTES", "fp64"]))
    elif mutation == "parameters":
        tensor["parameters"] = {"content_type": "np"}
    elif mutation == "two inputs":
        request["inputs"] = [tensor, tensor]
    elif mutation == "id":
        request["id"] = draw(st.one_of(st.text(max_size=8), st.integers(), st.none()))
    elif mutation == "outputs":
        request["outputs"] = [{"name": "predict"}]
    elif mutation == "request parameters":
        request["parameters"] = {"binary_data_output": False}
    elif mutation == "unknown field":
        tensor["note"] = "x"
    tensor["data"] = flat
    return request


@settings(max_examples=400, deadline=None)
@given(requests())
def test_the_plain_way_takes_only_what_the_general_way_takes_and_reads_it_the_same(
    request: dict[str, Any],
) -> None:
    body = json.dumps(request).encode()
    expected = general(body)
    plain = _plain(body, MAX_ROWS)
    event("plain" if plain is not None else "general")
    if plain is None:
        return
    rows, echoed = plain
    assert not isinstance(expected, str), f"the plain way took a body refused with {expected}"
    assert (rows.tobytes(), echoed.get("id")) == expected
    assert ("id" in echoed) == ("id" in request)


def test_a_plain_request_is_read_the_plain_way() -> None:
    """The shape tritonclient and MLServer's examples send, FP64 and FP32, with and without an
    id; a body the plain way does not read would pass the test above unchecked."""
    data = [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]
    for datatype in ("FP64", "FP32"):
        tensor = {"name": "input-0", "shape": [2, WIDTH], "datatype": datatype, "data": data}
        for request in ({"inputs": [tensor]}, {"inputs": [tensor], "id": "r-1"}):
            plain = _plain(json.dumps(request).encode(), MAX_ROWS)
            assert plain is not None, request
            rows, echoed = plain
            expected = np.asarray(data, dtype=datatype.replace("FP", "float")).reshape(2, WIDTH)
            np.testing.assert_array_equal(rows, expected.astype(np.float64))
            assert echoed == ({"id": "r-1"} if "id" in request else {})
