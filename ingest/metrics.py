"""Prometheus metrics, one registry per server (two servers in one process stay apart).

Counters and histograms are updated where things happen (per request, per flush, per
drain pass — never per event); gauges are read from the live objects at scrape time, so
``/metrics`` costs nothing between scrapes. The per-request pair is the exception in
form, not in content: :meth:`Metrics.observe_request` bumps plain dicts (the hot path)
and :class:`_RequestStats` turns them into the counter and histogram at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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


class _Counters(Collector):
    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, (help_text, value) in self._read().items():
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family


REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class _RequestStats(Collector):
    """``sluice_http_requests_total`` {route, status} and
    ``sluice_http_request_duration_seconds`` {route}, from :meth:`Metrics.observe_request`."""

    def __init__(self, requests: dict[tuple[str, int], int], durations: dict[str, list[float]]):
        self._requests = requests
        self._durations = durations

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        counter = CounterMetricFamily(
            "sluice_http_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for (route, status), count in list(self._requests.items()):
            counter.add_metric([route, str(status)], count)
        yield counter
        histogram = HistogramMetricFamily(
            "sluice_http_request_duration_seconds", "HTTP request duration", labels=["route"]
        )
        for route, slots in list(self._durations.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*REQUEST_BUCKETS, float("inf")), slots[:-1], strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            histogram.add_metric([route], buckets, slots[-1])
        yield histogram


class _ProjectCounter(Collector):
    """One counter labelled by project, read at scrape time from ``{project: value}``
    (the projects are resolved ones only, so the label set stays bounded)."""

    def __init__(self, name: str, help_text: str, read: Callable[[], dict[str, float]]) -> None:
        self._name, self._help, self._read = name, help_text, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._help, labels=["project"])
        for project, value in self._read().items():
            family.add_metric([project], value)
        yield family


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # Per-request figures are kept in plain dicts and turned into the Prometheus
        # counter and histogram at scrape time (_RequestStats): prometheus_client's own
        # take a lock per update and walk the buckets, ~4 us of every request.
        self._requests: dict[tuple[str, int], int] = {}
        self._durations: dict[str, list[float]] = {}  # route → bucket counts + sum
        r.register(_RequestStats(self._requests, self._durations))
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
        """Count one request and its duration."""
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        slots = self._durations.get(route)
        if slots is None:
            slots = self._durations[route] = [0.0] * (len(REQUEST_BUCKETS) + 2)
        slots[bisect_left(REQUEST_BUCKETS, seconds)] += 1  # the last slot before the sum: +Inf
        slots[-1] += seconds

    def add_gauges(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """Register a callback that returns ``{name: (help, value)}`` at scrape time."""
        self.registry.register(_Gauges(read))

    def add_counters(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """Register a callback returning ``{name: (help, value)}`` of counters kept
        elsewhere (exposed as ``name_total``)."""
        self.registry.register(_Counters(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def add_project_counter(
        self, name: str, help_text: str, read: Callable[[], dict[str, float]]
    ) -> None:
        """Register a per-project counter read at scrape time (``name_total{project}``)."""
        self.registry.register(_ProjectCounter(name, help_text, read))
