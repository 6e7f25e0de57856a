"""Moved to iris_devstack.processes; the names the benchmark imports from here, until its
modules import them from there."""

from iris_devstack.processes import (
    ManagedProcess,
    answers_post,
    free_port,
    start_process,
    wait_for_answer,
    wait_for_http,
    wait_until,
)
from iris_devstack.processes import http_ok as answers_200

__all__ = [
    "ManagedProcess",
    "answers_200",
    "answers_post",
    "free_port",
    "start_process",
    "wait_for_answer",
    "wait_for_http",
    "wait_until",
]
