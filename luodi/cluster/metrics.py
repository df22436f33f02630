"""Every replica's Prometheus metrics as one exposition, each sample labelled with its replica.

Families must stay contiguous in the text format, so the replicas' texts are parsed and their
samples regrouped per family (not concatenated).

Must not know HTTP: it takes the texts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merge_replica_metrics(texts: dict[str, str]) -> bytes:
    """{replica id: its /metrics text} -> one exposition with a `replica` label on every sample."""
    merged: dict[str, Metric] = {}
    for replica, text in texts.items():
        for family in text_string_to_metric_families(text):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            into.samples.extend(Sample(s.name, {"replica": replica, **s.labels}, s.value, s.timestamp, s.exemplar)
                                for s in family.samples)
    registry = CollectorRegistry()
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)
