"""`make bench`: the serving path measured against `mlflow models serve` in one run.

Run it from the repository root with `python -m bench.run` (or `make bench`, which installs
wrk first). See bench/run.py for what it does, in order.
"""
