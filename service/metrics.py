"""The server's Prometheus metrics (``GET /metrics``; docs/operations.md, "Metrics").

One :class:`ServerMetrics` per app, on a registry of its own (several apps in one process, as
in the tests, do not collide), with prometheus-client's process, platform and GC collectors.

- Requests: counted and timed by :mod:`.api.instrument`, labelled by route template (never the
  raw path: no label per run id), method and status class.
- Commits: the store tells :meth:`ServerMetrics.committed` how long each took and how many
  writes it held (:class:`~.store.base.CommitObserver`).
- Gauges read at a scrape, from memory only: the store's :class:`~.store.base.StoreStats`
  (write queue, waiting reads, WAL size or pool, runs by status, live leases) and the open
  event streams of the :class:`~.events.EventBroker`. A scrape never touches the database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .events import EventBroker
from .store.base import StoreStats
from .store.tally import TallyDelta

__all__ = ["CONTENT_TYPE", "ServerMetrics", "text_exposition"]

# The text exposition format, version 0.0.4 (what prometheus-client writes).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# A durable write takes a few milliseconds (an fsync); a stalled disk, seconds. Each bucket is
# a series per label set, and a scrape's cost grows with the series: ten, no more.
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# Writes per commit: 1 without concurrency, up to the writers' largest group (256).
_GROUP_BUCKETS: Final = (1, 4, 16, 64, 256)


def status_class(status: int) -> str:
    """``2xx``, ``4xx``...: the label a response's status is counted under."""
    return f"{status // 100}xx"


class _Gauges(Collector):
    """The gauges read at a scrape, from the store's and the broker's memory."""

    def __init__(self) -> None:
        self.stats: Callable[[], StoreStats] = StoreStats
        self.broker: EventBroker | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self.stats()
        yield GaugeMetricFamily(
            "runstore_store_write_queue",
            "Writes waiting for the next commit.",
            value=stats.write_queue,
        )
        yield GaugeMetricFamily(
            "runstore_store_reads_waiting",
            "Reads waiting for a database connection of the store's read pool.",
            value=stats.reads_waiting,
        )
        if stats.wal_bytes is not None:
            yield GaugeMetricFamily(
                "runstore_sqlite_wal_bytes",
                "Size of the SQLite write-ahead log file.",
                value=stats.wal_bytes,
            )
        if stats.pool_size is not None:
            connections = GaugeMetricFamily(
                "runstore_postgres_pool_connections",
                "Connections of the PostgreSQL pool, in use or idle.",
                labels=["state"],
            )
            in_use = stats.pool_in_use or 0
            connections.add_metric(["in_use"], in_use)
            connections.add_metric(["idle"], stats.pool_size - in_use)
            yield connections
        if stats.runs_by_status is not None:
            runs = GaugeMetricFamily("runstore_runs", "Stored runs, by status.", labels=["status"])
            for status, count in sorted(stats.runs_by_status.items()):
                runs.add_metric([status], count)
            yield runs
        if stats.live_leases is not None:
            yield GaugeMetricFamily(
                "runstore_leases_live", "Runs with a live lease.", value=stats.live_leases
            )
        yield GaugeMetricFamily(
            "runstore_event_streams_open",
            "Open event streams (GET /runs/{runId}/events and GET /events).",
            value=0 if self.broker is None else self.broker.watcher_count,
        )


class ServerMetrics:
    """The metrics of one app; see the module docstring."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        labels = ("route", "method", "status")
        self.requests = Counter(
            "runstore_http_requests",
            "HTTP requests answered, by route template, method and status class.",
            labels,
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "runstore_http_request_duration_seconds",
            "Time from a request's arrival at the app to the end of its answer.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_duration = Histogram(
            "runstore_store_commit_duration_seconds",
            "Time of one store transaction (a group commit), to stable storage.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.commit_writes = Histogram(
            "runstore_store_commit_writes",
            "Writes that shared one commit (group commit).",
            buckets=_GROUP_BUCKETS,
            registry=self.registry,
        )
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        # The labelled children, made once per label set: .labels() takes a lock and builds
        # a key each time, on every request.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def watch(self, stats: Callable[[], StoreStats], broker: EventBroker) -> None:
        """Report the store's gauges (``stats``) and the broker's open streams at every
        scrape."""
        self._gauges.stats = stats
        self._gauges.broker = broker

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            label = status_class(status)
            children = self._children[key] = (
                self.requests.labels(route, method, label),
                self.request_duration.labels(route, method, label),
            )
        children[0].inc()
        children[1].observe(seconds)

    def committed(self, seconds: float, writes: int, tallies: list[TallyDelta]) -> None:
        """A store commit (:class:`~.store.base.CommitObserver`); any thread."""
        self.commit_duration.observe(seconds)
        self.commit_writes.observe(writes)

    def exposition(self) -> bytes:
        """Every metric in the text exposition format (see :func:`text_exposition`)."""
        return text_exposition(self.registry)


# How the OpenMetrics types prometheus-client's families have are written in the text format.
_TEXT_TYPES: Final = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}


# The values Python writes otherwise than Prometheus reads them (its "nan" reads as NaN).
_SPECIAL_VALUES: Final = {math.inf: "+Inf", -math.inf: "-Inf"}


def _label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def text_exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format, version 0.0.4.

    prometheus-client's ``generate_latest`` writes the same, but checks and escapes every
    label name of every sample for UTF-8 names, and sorts them, and writes the OpenMetrics
    ``_created`` samples as series of their own: a scrape of a server that had served a few
    dozen label sets cost several times the budget of a millisecond (``bench/app_cpu.py
    metrics``). The names here are all valid legacy names (the server's and the library's
    collectors'), so only label values are escaped, and ``_created`` samples are left out
    (the text format has no use for them).
    """
    output: list[str] = []
    for family in registry.collect():
        name, kind = family.name, family.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
        documentation = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        output.append(f"# HELP {name} {documentation}\n")
        output.append(
            f"# TYPE {name} {_TEXT_TYPES.get(kind, 'untyped' if kind == 'unknown' else kind)}\n"
        )
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            value = _SPECIAL_VALUES.get(sample.value) or repr(float(sample.value))
            if sample.labels:
                labels = ",".join(
                    f'{label}="{_label_value(text)}"' for label, text in sample.labels.items()
                )
                output.append(f"{sample.name}{{{labels}}} {value}\n")
            else:
                output.append(f"{sample.name} {value}\n")
    return "".join(output).encode()
