"""A hot swap under load: the gateway is driven with wrk while `production` moves to a new
version, and the predictor's GET /model is polled to see when every answer names it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from bench.console import say
from bench.local_stack import BenchStack
from bench.wrk import Target, WrkResult, run_wrk

MOVE_AFTER_S = 3.0
POLL_EVERY_S = 0.05
# With several worker processes each swaps on its own; polls on fresh connections land on
# whichever worker accepts, so a run of answers all naming the new version stands for "all".
CONSECUTIVE_NEW_ANSWERS = 10


@dataclass
class SwapOutcome:
    from_version: str
    to_version: str
    load: WrkResult
    predictor_poll_interval_s: float
    first_new_answer_s: float | None
    all_new_answers_s: float | None
    polls: int
    failed_polls: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version,
            "to_version": self.to_version,
            "alias_moved_after_load_start_s": MOVE_AFTER_S,
            "predictor_poll_interval_s": self.predictor_poll_interval_s,
            "first_new_answer_s": self.first_new_answer_s,
            "all_new_answers_s": self.all_new_answers_s,
            "consecutive_answers_required": CONSECUTIVE_NEW_ANSWERS,
            "polls": self.polls,
            "failed_polls": self.failed_polls,
            "failed_requests": self.load.failed,
            "load": self.load.as_dict(),
        }


def served_version(url: str) -> str | None:
    try:
        # A new connection per poll (no shared client), so polls reach every worker process.
        response = httpx.get(url, timeout=2)
        return str(response.json()["version"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def hot_swap_under_load(
    stack: BenchStack,
    gateway: Target,
    to_version: str,
    poll_interval_s: float,
    connections: int,
) -> SwapOutcome:
    from_version = stack.production_version()
    model_url = f"{stack.predictor_url}/model"
    give_up_after_s = 3 * poll_interval_s + 5
    load_seconds = MOVE_AFTER_S + 2 * poll_interval_s + 4
    with ThreadPoolExecutor(max_workers=1) as pool:
        load = pool.submit(run_wrk, gateway, load_seconds, connections)
        time.sleep(MOVE_AFTER_S)
        stack.move_production_alias(to_version)
        moved = time.monotonic()
        say(f"moved production {from_version} -> {to_version} under load")
        first_new: float | None = None
        streak_start: float | None = None
        streak = polls = failed_polls = 0
        while time.monotonic() - moved < give_up_after_s:
            version = served_version(model_url)
            # Timed on the answer, not the question: the conservative end of the interval.
            answered = time.monotonic() - moved
            polls += 1
            if version is None:
                failed_polls += 1
            elif version == to_version:
                first_new = answered if first_new is None else first_new
                streak_start = answered if streak == 0 else streak_start
                streak += 1
                if streak >= CONSECUTIVE_NEW_ANSWERS:
                    break
            else:
                streak = 0
            time.sleep(POLL_EVERY_S)
        result = load.result()
    all_new = streak_start if streak >= CONSECUTIVE_NEW_ANSWERS else None
    return SwapOutcome(
        from_version=from_version,
        to_version=to_version,
        load=result,
        predictor_poll_interval_s=poll_interval_s,
        first_new_answer_s=None if first_new is None else round(first_new, 3),
        all_new_answers_s=None if all_new is None else round(all_new, 3),
        polls=polls,
        failed_polls=failed_polls,
    )
