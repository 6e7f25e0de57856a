"""Fixtures that start the gateway as a real process (see tests/support/processes.py)."""
