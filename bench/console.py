"""Progress lines of the benchmark, in the `[stack]` style of scripts/stack.py, with the
seconds since the start so a slow step stands out, and the seconds each phase took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:4.0f}s] {message}", flush=True)


@contextmanager
def timed(phase: str, seconds: dict[str, float]) -> Iterator[None]:
    """Record in `seconds[phase]` how long the block took, whether or not it succeeded."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[phase] = round(time.monotonic() - started, 1)


class Clock:
    """Seconds since a phase (a soak's traffic) started, with a timeline of what happened."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.events: list[dict[str, Any]] = []

    def __call__(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def at(self, epoch_s: float) -> float:
        """A wall-clock time (a log line's) on this clock."""
        return round(epoch_s - self.wall_started, 3)

    def add(self, what: str) -> float:
        now = self()
        self.events.append({"t": now, "event": what})
        say(f"t={now:.1f}s {what}")
        return now
