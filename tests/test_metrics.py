"""Per-request metrics: aggregated in plain dicts, exposed in the Prometheus format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ingest.metrics import Metrics


def test_request_counter_and_duration_histogram_as_prometheus_reads_them() -> None:
    metrics = Metrics()
    for status, seconds in ((202, 0.0005), (202, 0.0007), (202, 7.0), (401, 0.02)):
        metrics.observe_request("/api/v1/ingest/events", status, seconds)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    route = ("route", "/api/v1/ingest/events")
    assert samples[("sluice_http_requests_total", (route, ("status", "202")))] == 3
    assert samples[("sluice_http_requests_total", (route, ("status", "401")))] == 1

    def bucket(le: str) -> float:
        return samples[("sluice_http_request_duration_seconds_bucket", (("le", le), route))]

    assert bucket("0.0005") == 1  # le is inclusive
    assert bucket("0.001") == 2
    assert bucket("0.025") == 3
    assert bucket("5.0") == 3 and bucket("+Inf") == 4
    assert samples[("sluice_http_request_duration_seconds_count", (route,))] == 4
    assert abs(samples[("sluice_http_request_duration_seconds_sum", (route,))] - 7.0212) < 1e-9
