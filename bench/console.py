"""Progress lines of the benchmark, in the `[stack]` style of scripts/stack.py, with the
seconds since the start so a slow step stands out, and the seconds each phase took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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
