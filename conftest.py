"""Fixtures for the whole suite live in tests/support; each area owns its own module."""

import os

import pytest

# Before anything imports MLflow. Its telemetry client sets and unsets an environment variable
# from a thread of its own, which broke a test's training in-process (a KeyError inside
# os.environ's iteration, in requests); MLflow turns it off by itself only where CI is set.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

pytest_plugins = [
    "tests.support.core",
    "tests.support.predictor",
    "tests.support.worker",
    "tests.support.gateway",
    "tests.support.protocol_clients",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files that hold a slow test first, each file's tests in their own order.

    With `--dist loadfile` a worker takes a whole file at a time: a long file taken last keeps
    one worker busy while the other has nothing left, so the quick files are kept for the end.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
