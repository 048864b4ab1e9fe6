"""Reading a /metrics page in tests: samples by name and labels, with prometheus-client's own
parser of the text format."""

from __future__ import annotations

import os
import shutil

import pytest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "promtool"]


class Samples:
    """The samples of one scrape."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())))

    def labelled(self, name: str) -> list[dict[str, str]]:
        """The label sets of ``name``'s samples."""
        return [dict(labels) for sample, labels in self.values if sample == name]


def promtool() -> str:
    """Prometheus's promtool (Debian's prometheus package); CI must have it (.ci/run)."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool checks the exposition and the alert rules: apt-get install prometheus"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run these; .ci/run installs it)")
        pytest.skip(message)
    return found
