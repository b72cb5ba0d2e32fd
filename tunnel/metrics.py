"""The tunnel's Prometheus metrics, in a registry of their own (no process-wide default registry).

No label or value names a node or an address: `/metrics` is scraped from the cluster network (who is
connected, from where, is on the loopback-only `/v1/status`).

Counts that change with every byte (bytes carried, open streams, connected peers) are read from the live
sessions when Prometheus scrapes, rather than updated on the data path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclasses.dataclass(frozen=True)
class Live:
    peers: int
    streams: int
    bytes_in: int
    """Received from the other end of the tunnel."""
    bytes_out: int


class _LiveCollector(Collector):
    def __init__(self, prefix: str, peers_help: str, read: Callable[[], Live]) -> None:
        self._prefix = prefix
        self._peers_help = peers_help
        self._read = read

    def collect(self) -> Iterator[Metric]:
        live = self._read()
        yield GaugeMetricFamily(f"{self._prefix}_connected", self._peers_help, value=live.peers)
        yield GaugeMetricFamily(f"{self._prefix}_streams_open", "Tunnelled connections open", value=live.streams)
        carried = CounterMetricFamily(
            f"{self._prefix}_bytes", "Stream bytes carried, by direction", labels=["direction"]
        )
        carried.add_metric(["received"], live.bytes_in)
        carried.add_metric(["sent"], live.bytes_out)
        yield carried


class ServerMetrics:
    def __init__(self, read: Callable[[], Live]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LiveCollector("yurt_tunnel_agents", "Agent connections open", read))
        self.connects = Counter(
            "yurt_tunnel_connect_requests", "CONNECT requests, by answer", ["code"], registry=self.registry
        )
        self.dial_failures = Counter(
            "yurt_tunnel_dial_failures", "Dials that failed, by reason", ["reason"], registry=self.registry
        )
        self.agent_rejections = Counter(
            "yurt_tunnel_agent_rejections", "Agent connections refused, by reason", ["reason"], registry=self.registry
        )
        self.protocol_errors = Counter(
            "yurt_tunnel_protocol_errors", "Agent connections closed for breaking the protocol", registry=self.registry
        )
        self.flood_closes = Counter(
            "yurt_tunnel_flood_closes",
            "Agent connections closed for flooding (PINGs past the rate, or not reading what they asked for)",
            registry=self.registry,
        )


class AgentMetrics:
    def __init__(self, read: Callable[[], Live]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LiveCollector("yurt_tunnel_agent_servers", "Server replicas held", read))
        self.dials = Counter(
            "yurt_tunnel_agent_dials", "Dial requests from the cloud, by outcome", ["outcome"], registry=self.registry
        )
        self.connects = Counter(
            "yurt_tunnel_agent_connects",
            "Connection attempts to a server, by outcome",
            ["outcome"],
            registry=self.registry,
        )
