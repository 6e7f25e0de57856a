"""Fixtures for the whole suite live in tests/support; each area owns its own module."""

pytest_plugins = [
    "tests.support.core",
    "tests.support.predictor",
    "tests.support.worker",
    "tests.support.gateway",
    "tests.support.protocol_clients",
]
