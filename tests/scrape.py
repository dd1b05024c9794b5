"""Read a Prometheus text endpoint the way Prometheus does, into ``{(sample name, labels): value}``."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Series:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def delta(before: Series, after: Series, name: str, **labels: str) -> float:
    """How much the series ``name`` with exactly ``labels`` grew between two scrapes (absent = 0)."""
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)
