"""The benchmarks: `make bench` (run.py), `make soak` (soak.py), `make profile` (profile.py)."""
