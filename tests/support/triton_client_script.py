"""Drive tritonclient's HTTP client as a user would; run by tests/support/protocol_clients.py.

Runs in a virtual environment of its own (tritonclient's pins are not the project's), so it
imports nothing of the project. Reads one JSON document on stdin:

    {"url": "127.0.0.1:8002", "calls": [{"call": "infer", ...}, {"call": "is_server_ready"}, ...]}

and writes one JSON list on stdout, one entry per call: {"result": ...} or, when the client
raised, {"error": {"status": ..., "message": ...}}.

infer takes: model, version ("" for none), rows (a list of 4-number lists), datatype ("FP32" or
"FP64"), binary_input, outputs ([{"name": ..., "binary": ...}] or null for all), request_id,
headers; its result is the outputs as lists (labels as text), the response's JSON part
(`get_response()`) and the output names the server sent in binary.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _infer(client: httpclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    dtype = np.float32 if call.get("datatype", "FP32") == "FP32" else np.float64
    rows = np.asarray(call["rows"], dtype=dtype)
    tensor = httpclient.InferInput("input-0", list(rows.shape), call.get("datatype", "FP32"))
    tensor.set_data_from_numpy(rows, binary_data=call.get("binary_input", False))
    outputs = None
    if call.get("outputs") is not None:
        outputs = [
            httpclient.InferRequestedOutput(out["name"], binary_data=out.get("binary", False))
            for out in call["outputs"]
        ]
    result = client.infer(
        call["model"],
        [tensor],
        model_version=call.get("version", ""),
        outputs=outputs,
        request_id=call.get("request_id", ""),
        headers=call.get("headers"),
    )
    response = result.get_response()
    values: dict[str, Any] = {}
    binary: list[str] = []
    for output in response.get("outputs", []):
        name = output["name"]
        array = result.as_numpy(name)
        if "binary_data_size" in output.get("parameters", {}):
            binary.append(name)
        if array.dtype == object:
            values[name] = [
                item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()
            ]
        else:
            values[name] = array.tolist()
    return {"outputs": values, "response": response, "binary_outputs": binary}


def _call(client: httpclient.InferenceServerClient, call: dict[str, Any]) -> Any:
    kind = call["call"]
    if kind == "infer":
        return _infer(client, call)
    if kind == "is_server_live":
        return client.is_server_live()
    if kind == "is_server_ready":
        return client.is_server_ready()
    if kind == "is_model_ready":
        return client.is_model_ready(call["model"], model_version=call.get("version", ""))
    if kind == "get_server_metadata":
        return client.get_server_metadata()
    if kind == "get_model_metadata":
        return client.get_model_metadata(call["model"], model_version=call.get("version", ""))
    raise ValueError(f"unknown call {kind!r}")


def main() -> None:
    order = json.load(sys.stdin)
    answers = []
    with httpclient.InferenceServerClient(order["url"], network_timeout=30.0) as client:
        for call in order["calls"]:
            try:
                answers.append({"result": _call(client, call)})
            except InferenceServerException as exc:
                answers.append({"error": {"status": exc.status(), "message": exc.message()}})
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
