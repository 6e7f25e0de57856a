"""One run of `make bench`, `make soak` or `make profile` on a second local stack
(iris_devstack.private_stack): its state folder, the stack, and what the results say of the run.

    with Session("bench", command_line()) as session:
        session.stack.start_redis(); session.stack.up()
        ...
        session.finished = True
    results = session.results | {...} | session.closing()

On exit the stack stops; the state folder (logs included) goes only when the run finished and
BENCH_KEEP_STATE is unset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.console import say, timed
from bench.measurements import git_commit, library_versions, load_average, machine
from iris_devstack.private_stack import PrivateStack


class Session:
    def __init__(self, name: str, command: str, phases: dict[str, float] | None = None) -> None:
        self.started = time.monotonic()
        self.phases = phases
        self.results: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
            "git": git_commit(),
            # Whatever the person running it knows about the machine meanwhile (other jobs, ...).
            "note": os.environ.get("BENCH_NOTE", ""),
            "load_average": {"before": load_average()},
        }
        self.work = Path(tempfile.mkdtemp(prefix=f"iris-{name}-"))
        say(f"state and logs in {self.work}")
        self.stack = PrivateStack.prepare(self.work)
        self.finished = False

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        say("stopping the stack")
        with timed("stack_down", self.phases) if self.phases is not None else nullcontext():
            self.stack.down()
        if self.finished and not os.environ.get("BENCH_KEEP_STATE"):
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            logs = f"{self.work / 'logs'} and {self.work / 'state' / 'logs'}"
            say(f"kept {self.work} (logs in {logs})")

    def closing(self) -> dict[str, Any]:
        """What the results say of the run once it is over: time, load, machine, libraries."""
        load = self.results["load_average"] | {"after": load_average()}
        elapsed = round(time.monotonic() - self.started, 1)
        return {
            "load_average": load,
            "elapsed_s": elapsed,
            "machine": machine(),
            "versions": library_versions(),
        }
