"""Fixtures that start the predictor as a real process (see tests/support/processes.py)."""
