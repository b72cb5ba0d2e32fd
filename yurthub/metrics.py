"""yurthub's Prometheus metrics, in a registry of their own that `server` builds and passes down.

Every label value comes from a closed set (`Labels`): known verbs, known resources or `other`, known
components or `other`, `pod` for every token scope. Requests with made-up paths, methods and User-Agents
therefore never add series: the number of series is fixed by configuration, not by traffic.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from yurthub import cache, peers, storage

OTHER = "other"
VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})
"""Kubernetes verbs; any other method is `other`."""
RESOURCES = frozenset(
    {
        "",
        "bindings",
        "certificatesigningrequests",
        "configmaps",
        "csidrivers",
        "csinodes",
        "csistoragecapacities",
        "customresourcedefinitions",
        "daemonsets",
        "deployments",
        "endpoints",
        "endpointslices",
        "events",
        "ingressclasses",
        "ingresses",
        "jobs",
        "leases",
        "limitranges",
        "localsubjectaccessreviews",
        "namespaces",
        "networkpolicies",
        "nodes",
        "persistentvolumeclaims",
        "persistentvolumes",
        "poddisruptionbudgets",
        "pods",
        "priorityclasses",
        "replicasets",
        "resourcequotas",
        "runtimeclasses",
        "secrets",
        "serviceaccounts",
        "services",
        "statefulsets",
        "storageclasses",
        "subjectaccessreviews",
        "tokenreviews",
        "volumeattachments",
    }
)
"""Built-in resources node components use; custom resources and made-up names are `other`."""
COMPONENTS = frozenset({"", "kubelet", "kube-proxy", "coredns", "flanneld", "yurt-tunnel-agent", "yurthub", "kubectl"})
"""Components always labelled by name, besides the configured cache agents."""
POD = "pod"
"""The label of every token scope: one per pod token would be a series per token."""


class Labels:
    """Map request attributes onto closed label sets."""

    def __init__(self, components: Iterable[str] = ()) -> None:
        self.components = COMPONENTS | {c for c in components if c != "*"}

    def component(self, component: str) -> str:
        if cache.is_token_scope(component):
            return POD
        return component if component in self.components else OTHER

    @staticmethod
    def verb(verb: str) -> str:
        return verb if verb in VERBS else OTHER

    @staticmethod
    def resource(resource: str) -> str:
        return resource if resource in RESOURCES else OTHER


class _CacheUsage(Collector):
    """Objects and bytes cached per component and resource, read from storage at scrape time; token scopes
    are summed into `pod` and unknown components into `other`."""

    def __init__(self, usage: Callable[[], list[storage.Usage]], labels: Labels) -> None:
        self._usage = usage
        self._labels = labels

    def collect(self) -> Iterable[GaugeMetricFamily]:
        objects = GaugeMetricFamily(
            "yurthub_cache_objects", "Objects in the cache", labels=["component", "resource", "encoding"]
        )
        size = GaugeMetricFamily(
            "yurthub_cache_bytes",
            "Bytes of objects in the cache",
            labels=["component", "resource", "encoding"],
        )
        counted: dict[tuple[str, str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
        for u in self._usage():
            totals = counted[(self._labels.component(u.component), u.gvr, u.encoding)]
            totals[0] += u.objects
            totals[1] += u.bytes
        for key, (n, b) in sorted(counted.items()):
            objects.add_metric(list(key), n)
            size.add_metric(list(key), b)
        yield objects
        yield size


class Metrics:
    def __init__(self, components: Iterable[str] = ()) -> None:
        """`components`: the configured cache agents, labelled by name besides `COMPONENTS`."""
        self.labels = Labels(components)
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

        self.memory_held = Gauge(
            "yurthub_memory_held_bytes",
            "Bytes held in memory by the request path, by budget (requests: bodies and whole answers; "
            "lists: list bodies buffered for the cache)",
            ["budget"],
            registry=r,
        )
        self.overloaded = Counter(
            "yurthub_overload_total",
            "Requests answered 429, or lists not cached, because a memory budget was spent",
            ["budget"],
            registry=r,
        )
        self.inflight = Gauge(
            "yurthub_inflight_requests",
            "Non-watch requests in flight, by class (node: cache agents; pod: the HTTPS door; other)",
            ["class"],
            registry=r,
        )
        self.refused = Counter(
            "yurthub_inflight_refused_total",
            "Requests answered 429 because their class had its limit of requests in flight (reason=class), "
            "one door client (a source address or a token) its share of the class (reason=client), or the "
            "request waited for its turn among the pods' and other clients' seats too long (reason=wait)",
            ["class", "reason"],
            registry=r,
        )
        self.peer_lookup_failures = Counter(
            "yurthub_peer_lookup_failures_total",
            "Plain-port requests of a cache agent whose client's uid the kernel could not tell (`peers`): "
            "served as other, never as node. reason: refused (the kernel answered an error, e.g. no such "
            "socket), closed (the client had closed its socket), malformed (an answer that makes no sense, or "
            "none), unavailable (netlink not usable)",
            ["reason"],
            registry=r,
        )
        for reason in peers.REASONS:
            self.peer_lookup_failures.labels(reason)
        self.waiting = Gauge(
            "yurthub_waiting_requests",
            "Non-watch requests admitted and waiting for their turn (pod and other; node never waits)",
            ["class"],
            registry=r,
        )
        self.serving_non_node = Gauge(
            "yurthub_serving_non_node_requests",
            "Non-watch pod and other requests being served at once (at most --max-concurrent-non-node)",
            registry=r,
        )
        self.bounded = Gauge(
            "yurthub_bounded_entries",
            "Entries of the bounded tables (list digests, cache views, token scopes, tombstones, objects)",
            ["table"],
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
        self.registry.register(_CacheUsage(usage, self.labels))

    def request(self, component: str, verb: str, resource: str, outcome: str) -> None:
        """Count one request, its labels mapped onto closed sets."""
        lb = self.labels
        self.requests.labels(lb.component(component), lb.verb(verb), lb.resource(resource), outcome).inc()

    def cache_read(self, component: str, result: str) -> None:
        self.cache_reads.labels(self.labels.component(component), result).inc()
