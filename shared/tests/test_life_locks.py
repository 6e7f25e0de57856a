"""Locks held for a process's life: a slot or role passes on when its holder dies, even by
SIGKILL, and never while it lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from iris_shared.life_locks import first_free, lock_for_life

_HOLD = """
import sys, time
from pathlib import Path
from iris_shared.life_locks import lock_for_life
assert lock_for_life(Path(sys.argv[1])) is not None
print("held", flush=True)
time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_slot_held_by_a_live_process_is_skipped_and_passes_on_when_it_is_killed(
    tmp_path: Path,
) -> None:
    paths = [tmp_path / f"slot-{n}.lock" for n in range(3)]
    holder = _holder(paths[0])
    try:
        claimed = first_free(paths)
        assert claimed is not None
        assert claimed[1] == 1
        os.close(claimed[0])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claimed = first_free(paths)
    assert claimed is not None
    assert claimed[1] == 0
    os.close(claimed[0])


def test_every_slot_held_gives_none_and_a_closed_lock_is_free_again(tmp_path: Path) -> None:
    paths = [tmp_path / "a.lock", tmp_path / "b.lock"]
    first, second = (lock_for_life(path) for path in paths)
    assert first is not None
    assert second is not None
    # Another open file description of the same file is another holder, even in this process.
    assert first_free(paths) is None
    assert lock_for_life(paths[1]) is None
    os.close(second)
    claimed = first_free(paths)
    assert claimed is not None
    assert claimed[1] == 1
