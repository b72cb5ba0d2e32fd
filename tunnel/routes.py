"""Which live agent serves a CONNECT target, and whether a target may be dialled at all. Pure: no I/O.

Agents are known by the node their certificate names; the Kubernetes Node objects say which addresses each
node has. A target host is either a node name or one of a node's addresses (kube-apiserver dials kubelets
by the first of `--kubelet-preferred-address-types` it finds).

A node writes its own status, so the addresses a node lists are claims, not facts: a compromised edge node
can list another node's address, a webhook pod's or an aggregated API's. The rules that keep one
compromised node from capturing anyone else's traffic:

- a node name is matched first, so listing another node's name as an address changes nothing;
- an address listed by two or more edge nodes routes to none of them (`Refused` with the claimants);
- an address of a cloud node (an address it lists, or one inside its pod CIDRs) never routes to an agent,
  whatever an edge node lists: the cloud node keeps its traffic, dialled directly;
- loopback, link-local, unspecified and cloud metadata addresses never route to an agent;
- with `edge_cidrs`, an address routes to an agent only if it is inside them.

An edge node is one labelled so, or one an agent serves. An agent that reconnects while its old connection
is not yet known to be dead has two sessions for a while; the newest one serves.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import Generic, TypeVar

S = TypeVar("S")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "metadata.azure.internal", "instance-data"})
"""Host names of cloud metadata services, refused as targets whatever they resolve to."""
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)


def special_address(address: str) -> str | None:
    """Why `address` must never be a target (loopback, link-local, unspecified, cloud metadata), or None.

    Names are not judged here beyond the metadata names: the server resolves a name and judges every
    address it resolves to."""
    host = address.strip("[]").rstrip(".").lower()
    if host in METADATA_NAMES:
        return "a cloud metadata service"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "a loopback name" if host == "localhost" or host.endswith(".localhost") else None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata service"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    return None


def parse_cidrs(text: Iterable[str]) -> tuple[Network, ...]:
    """`ValueError` for anything that is not a network."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in text if c.strip())


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Agent(Generic[S]):
    """Reach `node` through its agent; `session` None when no agent is connected (an edge node: 502)."""

    node: str
    session: S | None


@dataclasses.dataclass(frozen=True)
class Refused:
    """The target names something no one may reach through the tunnel; `reason` is one line."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Direct:
    """Not an edge node's: dialled directly if the server does that (and the address is not special)."""


Route = Agent[S] | Refused | Direct


class Routes(Generic[S]):
    def __init__(self, edge_cidrs: Iterable[Network] = ()) -> None:
        self._sessions: dict[str, list[S]] = {}
        self._addresses: dict[str, frozenset[str]] = {}
        self._pod_cidrs: dict[str, tuple[Network, ...]] = {}
        self._claims: dict[str, set[str]] = {}
        self._edge: set[str] = set()
        self._edge_cidrs = tuple(edge_cidrs)

    # --- agents -----------------------------------------------------------------------------------

    def add(self, node: str, session: S) -> None:
        self._sessions.setdefault(node, []).append(session)

    def remove(self, node: str, session: S) -> None:
        sessions = self._sessions.get(node, [])
        if session in sessions:
            sessions.remove(session)
        if not sessions:
            self._sessions.pop(node, None)

    def sessions(self, node: str) -> list[S]:
        return list(self._sessions.get(node, []))

    @property
    def agents(self) -> dict[str, list[S]]:
        return {node: list(s) for node, s in self._sessions.items()}

    # --- nodes ------------------------------------------------------------------------------------

    def set_addresses(
        self, node: str, addresses: Iterable[str], *, edge: bool = False, pod_cidrs: Iterable[str] = ()
    ) -> None:
        """A node's addresses and pod CIDRs, and whether it is an edge node (reached through its agent only)."""
        if edge:
            self._edge.add(node)
        else:
            self._edge.discard(node)
        for old in self._addresses.get(node, frozenset()):
            claimants = self._claims.get(old)
            if claimants is not None:
                claimants.discard(node)
                if not claimants:
                    del self._claims[old]
        fresh = frozenset(a.lower() for a in addresses if a)
        self._addresses[node] = fresh
        for address in fresh:
            self._claims.setdefault(address, set()).add(node)
        networks: list[Network] = []
        for cidr in pod_cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                continue  # a malformed CIDR protects nothing and routes nothing
        self._pod_cidrs[node] = tuple(networks)

    def forget_node(self, node: str) -> None:
        self.set_addresses(node, ())
        self._addresses.pop(node, None)
        self._pod_cidrs.pop(node, None)
        self._edge.discard(node)

    def replace_nodes(self, nodes: dict[str, tuple[Iterable[str], bool, Iterable[str]]]) -> None:
        """A full relist, node → (addresses, edge, pod CIDRs): nodes not in `nodes` are forgotten."""
        for node in set(self._addresses) - set(nodes):
            self.forget_node(node)
        for node, (addresses, edge, pod_cidrs) in nodes.items():
            self.set_addresses(node, addresses, edge=edge, pod_cidrs=pod_cidrs)

    def is_edge(self, node: str) -> bool:
        """Labelled an edge node, or served by an agent: never dialled directly."""
        return node in self._edge or node in self._sessions

    def addresses(self, node: str) -> frozenset[str]:
        return self._addresses.get(node, frozenset())

    def is_node_name(self, host: str) -> bool:
        return host in self._addresses or host in self._sessions

    # --- lookups ----------------------------------------------------------------------------------

    def _cloud_owner(self, host: str) -> str | None:
        """A cloud node that lists `host` or whose pod CIDRs hold it."""
        for node in sorted(self._claims.get(host, ())):
            if not self.is_edge(node):
                return node
        ip = _ip(host)
        if ip is not None:
            for node, networks in sorted(self._pod_cidrs.items()):
                if not self.is_edge(node) and any(ip in n for n in networks):
                    return node
        return None

    def route(self, host: str) -> Route[S]:
        """Where a CONNECT to `host` goes (see the module docstring for the rules)."""
        host = host.strip("[]").lower()
        if self.is_node_name(host):
            if not self.is_edge(host):
                return Direct()
            sessions = self._sessions.get(host)
            return Agent(host, sessions[-1] if sessions else None)
        edge = sorted(n for n in self._claims.get(host, ()) if self.is_edge(n))
        if not edge:
            return Direct()
        if self._cloud_owner(host) is not None:
            return Direct()  # a cloud node's address: an edge node listing it captures nothing
        if special_address(host) is not None:
            return Direct()  # judged (and refused) as a direct target
        if len(edge) > 1:
            return Refused(f"address {host} is listed by more than one node ({', '.join(edge)}): routed to none")
        ip = _ip(host)
        if self._edge_cidrs and (ip is None or not any(ip in n for n in self._edge_cidrs)):
            return Direct()  # outside the edge networks: not an edge address, whatever the node says
        sessions = self._sessions.get(edge[0])
        return Agent(edge[0], sessions[-1] if sessions else None)
