"""Cold start of the predictor: from starting its process to /readyz answering 200, which it
does only once a model is loaded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.local_stack import BenchStack
from bench.processes import answers_200, wait_until


def predictor_cold_start(stack: BenchStack) -> dict[str, Any]:
    stack.supervisorctl("stop", "predictor")
    # `supervisorctl start` returns only after the program's startsecs; time from the start
    # request instead, polling readiness meanwhile.
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        start = pool.submit(stack.supervisorctl, "start", "predictor")
        try:
            wait_until(answers_200(f"{stack.predictor_url}/readyz"), timeout=180)
            seconds = time.monotonic() - started
        except TimeoutError:
            return {"seconds": None, "error": "/readyz not 200 within 180 s"}
        finally:
            start.result()
    ready = httpx.get(f"{stack.predictor_url}/readyz", timeout=5).json()
    return {
        "seconds": round(seconds, 2),
        "model_version": ready.get("model_version"),
        "source": ready.get("source"),
        "how": "supervisorctl start predictor → GET /readyz 200 (model loaded)",
    }
