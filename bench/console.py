"""Progress lines of the benchmark, in the `[stack]` style of `make up`, with the
seconds since the start so a slow step stands out, and the seconds each phase took."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:4.0f}s] {message}", flush=True)


def attempt(what: str, step: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run a step whose failure is recorded in the results instead of ending the run."""
    try:
        return step(), None
    except Exception as exc:
        say(f"{what} failed: {exc}")
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {exc}"


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


class Every:
    """A thread that calls `tick()` every `seconds` from start() until stop()."""

    def __init__(self, seconds: float, name: str) -> None:
        self.seconds = seconds
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _run(self) -> None:
        while not self.stopping.wait(self.seconds):
            self.tick()

    def tick(self) -> None:
        raise NotImplementedError
