"""Fixtures that start the worker as a real process (see tests/support/processes.py)."""
