"""Contracts shared by the iris-mlops services.

Only what more than one service must agree on lives here: the request and response
schemas, the retrain job payload, the settings base, the error envelope and logging.
No business logic.
"""
