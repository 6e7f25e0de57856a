"""A service's /metrics read as Prometheus reads it, with prometheus_client's own parser: a test
then fails on an exposition Prometheus would refuse, not only on a wrong value."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric_sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the first sample called `name` (`..._total` for a counter, `..._bucket` for
    a histogram's buckets) whose labels include `labels` (it may have others); None if there is
    none."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return float(found.value)
    return None


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """`metric_sample`, reading a series not exposed yet as 0 (a counter no request has touched)."""
    found = metric_sample(exposition, name, **labels)
    return 0.0 if found is None else found
