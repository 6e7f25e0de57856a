"""A bytecode cache for this test run and every process it starts (loaded first: see addopts).

Each process the suite starts (MLflow, the services, Celery, the CLI) imports MLflow and
scikit-learn. Without cached bytecode each one compiles them again: ~6 s of CPU for
`import mlflow` alone, times dozens of processes on two cores. Shells and images that set
PYTHONDONTWRITEBYTECODE (it stops Python from writing bytecode, not from reading it) would leave
the venv without any. So the suite reads and writes bytecode in a folder of its own inside the
venv (PYTHONPYCACHEPREFIX), whatever that variable says, and leaves the source tree and
site-packages as they are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Kept with the venv: it holds bytecode of the venv's packages and goes when the venv goes.
# A file's bytecode is checked against its source's time and size, so a stale one is never run.
BYTECODE_CACHE = Path(sys.executable).parent.parent / "pycache"

if not os.environ.get("PYTHONPYCACHEPREFIX"):
    os.environ["PYTHONPYCACHEPREFIX"] = str(BYTECODE_CACHE)
    sys.pycache_prefix = str(BYTECODE_CACHE)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
