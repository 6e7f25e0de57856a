"""Locks a process holds for as long as it lives: how the worker processes of a server share
out roles and slots with no coordinator.

An exclusive `flock` is released by the kernel when its holder dies, however it dies (SIGKILL
included), so whatever it guarded passes to the next process that asks: a restarted worker
takes over its predecessor's slot (its prediction log file, its row of the connections table),
and another worker takes over a role (`WorkerPeers.lead`). A lock file is never removed: it is
the lock's name, and removing it while held would let a second process lock a new file of the
same name.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path


def lock_for_life(path: Path) -> int | None:
    """The descriptor of an exclusive lock on `path` (made if missing), held until it is closed
    or this process ends; None if another process holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def first_free(lock_paths: Iterable[Path]) -> tuple[int, int] | None:
    """The lock and the index of the first of `lock_paths` no other process holds (see
    `lock_for_life`), or None if every one is held. `lock_paths` may be endless."""
    for index, path in enumerate(lock_paths):
        descriptor = lock_for_life(path)
        if descriptor is not None:
            return descriptor, index
    return None
