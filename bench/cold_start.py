"""Cold start of the predictor: from starting its process to its first 200 answer to a one-row
`POST /predict`, timed as the peers' are (bench/peers.py), and when /readyz said it was ready."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench import payloads
from bench.local_stack import BenchStack
from bench.processes import answers_200, answers_post, wait_until


def predictor_cold_start(stack: BenchStack) -> dict[str, Any]:
    # The predictor runs as replicas (`predictor:predictor-0`, ...): all stop and start.
    stack.supervisorctl("stop", "predictor:*")
    predict = answers_post(
        f"{stack.predictor_url}/predict",
        json.dumps(payloads.FLOWER).encode(),
        {"Content-Type": "application/json"},
    )
    # `supervisorctl start` returns only after the program's startsecs; time from the start
    # request instead, polling meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        start = pool.submit(stack.supervisorctl, "start", "predictor:*")
        try:
            ready_s = wait_until(answers_200(f"{stack.predictor_url}/readyz"), timeout=180)
            answer_s = wait_until(predict, timeout=60, interval=0.02)
            seconds = time.monotonic() - started
        except TimeoutError:
            return {"seconds": None, "error": "no 200 to POST /predict within 240 s"}
        finally:
            start.result()
    ready = httpx.get(f"{stack.predictor_url}/readyz", timeout=5).json()
    return {
        "seconds": round(seconds, 2),
        "ready_s": round(ready_s, 2),
        "after_ready_s": round(answer_s, 2),
        "model_version": ready.get("model_version"),
        "source": ready.get("source"),
        "how": "supervisorctl start predictor:* → first 200 to a one-row POST /predict",
    }
