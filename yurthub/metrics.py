"""yurthub's Prometheus metrics, in a registry of their own that `server` builds and passes down."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from yurthub import storage


class _CacheUsage(Collector):
    """Objects and bytes cached per component and resource, read from storage at scrape time."""

    def __init__(self, usage: Callable[[], list[storage.Usage]]) -> None:
        self._usage = usage

    def collect(self) -> Iterable[GaugeMetricFamily]:
        objects = GaugeMetricFamily(
            "yurthub_cache_objects", "Objects in the cache", labels=["component", "resource", "encoding"]
        )
        size = GaugeMetricFamily(
            "yurthub_cache_bytes",
            "Bytes of objects in the cache",
            labels=["component", "resource", "encoding"],
        )
        for u in self._usage():
            objects.add_metric([u.component, u.gvr, u.encoding], u.objects)
            size.add_metric([u.component, u.gvr, u.encoding], u.bytes)
        yield objects
        yield size


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cloud_healthy = Gauge(
            "yurthub_cloud_server_healthy", "1 when the server is healthy", ["server"], registry=r
        )
        self.requests = Counter(
            "yurthub_requests_total",
            "Requests by verb, resource and outcome",
            ["component", "verb", "resource", "outcome"],
            registry=r,
        )
        self.cache_reads = Counter(
            "yurthub_cache_reads_total",
            "Offline reads by component and result",
            ["component", "result"],
            registry=r,
        )
        self.cache_write_errors = Counter(
            "yurthub_cache_write_errors_total",
            "Responses that could not be cached, by reason",
            ["reason"],
            registry=r,
        )
        self.cache_writable = Gauge(
            "yurthub_cache_writable", "0 while the disk cache fails to write (full disk)", registry=r
        )
        self.cache_writable.set(1)
        self.outbox_depth = Gauge("yurthub_outbox_depth", "Writes waiting for the cloud", registry=r)
        self.outbox_dropped = Gauge(
            "yurthub_outbox_dropped", "Oldest writes dropped because the outbox was full", registry=r
        )
        self.outbox_delivered = Counter("yurthub_outbox_delivered_total", "Queued writes delivered", registry=r)
        self.upstream_latency = Histogram(
            "yurthub_upstream_latency_seconds",
            "Time to the response headers from the cloud",
            ["server"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

        self.cert_expiry = Gauge(
            "yurthub_certificate_expiry_seconds",
            "Seconds until the certificate expires (negative once it has)",
            ["kind"],
            registry=r,
        )
        self.cert_rotations = Counter(
            "yurthub_certificate_rotations_total", "Certificates replaced by newer ones", ["kind"], registry=r
        )
        self.cert_pending = Gauge(
            "yurthub_certificate_request_pending", "1 while a CSR waits for approval or signing", ["kind"], registry=r
        )

    def watch_cache(self, usage: Callable[[], list[storage.Usage]]) -> None:
        self.registry.register(_CacheUsage(usage))
