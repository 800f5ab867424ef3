"""Prometheus metrics, one registry per server (two servers in one process stay apart).

Counters and histograms are updated where things happen (per request, per flush, per
drain pass — never per event); gauges are read from the live objects at scrape time, so
``/metrics`` costs nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # the *_created series only add noise to every scrape


class _Gauges(Collector):
    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, value) in self._read().items():
            family = GaugeMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sluice_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "sluice_http_request_duration_seconds", "HTTP request duration", ["route"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=r,
        )  # fmt: skip
        self.events_accepted = Counter(
            "sluice_events_accepted", "Events answered with 2xx and queued", registry=r
        )
        self.events_rejected = Counter(
            "sluice_events_rejected", "Events rejected by validation", ["reason"], registry=r
        )
        self.events_flushed = Counter(
            "sluice_events_flushed", "Events written to ClickHouse by the flusher", registry=r
        )
        self.events_parked = Counter(
            "sluice_events_parked", "Events parked in the dead-letter table", registry=r
        )
        self.events_replayed = Counter(
            "sluice_events_replayed", "Events written to ClickHouse by the drain", registry=r
        )
        self.events_quarantined = Counter(
            "sluice_events_quarantined", "Events quarantined by the drain", registry=r
        )
        self.flush_seconds = Histogram(
            "sluice_flush_duration_seconds", "Flush duration by outcome", ["outcome"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )  # fmt: skip

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one request and its duration (label children cached: looking them up
        costs more than the update)."""
        children = self._request_children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)),
                        self.request_seconds.labels(route))  # fmt: skip
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def add_gauges(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """Register a callback that returns ``{name: (help, value)}`` at scrape time."""
        self.registry.register(_Gauges(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
