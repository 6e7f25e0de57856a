"""Bytecode for this test run and every process it starts (loaded first: see addopts).

Each process the suite starts (MLflow, the services, Celery, the CLI) imports MLflow and
scikit-learn; without bytecode each one compiles them again: ~6 s of CPU for `import mlflow`
alone, times dozens of processes on two cores. `make install` compiles the venv's packages
(`uv sync --compile-bytecode`), which Python reads whatever PYTHONDONTWRITEBYTECODE says; this
lets the run and its processes write the bytecode of what is still missing (the project's own
modules, a venv installed another way) instead of compiling it again in every process.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
