"""Which live agent serves a CONNECT target. Pure: no I/O.

Agents are known by the node their certificate names; the Kubernetes Node objects say which addresses each
node has. A target host is either a node name or one of a node's addresses (kube-apiserver dials kubelets
by the first of `--kubelet-preferred-address-types` it finds). Addresses come only from Node objects, never
from what an agent claims, so an agent cannot attract traffic meant for another node.

An agent that reconnects while its old connection is not yet known to be dead has two sessions for a while;
the newest one serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

S = TypeVar("S")


class Routes(Generic[S]):
    def __init__(self) -> None:
        self._sessions: dict[str, list[S]] = {}
        self._addresses: dict[str, frozenset[str]] = {}
        self._owner: dict[str, str] = {}
        self._edge: set[str] = set()

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

    def set_addresses(self, node: str, addresses: Iterable[str], *, edge: bool = False) -> None:
        """A node's addresses, and whether it is an edge node (reached through its agent only)."""
        if edge:
            self._edge.add(node)
        else:
            self._edge.discard(node)
        for old in self._addresses.get(node, frozenset()):
            if self._owner.get(old) == node:
                del self._owner[old]
        fresh = frozenset(a for a in addresses if a)
        self._addresses[node] = fresh
        for address in fresh:
            self._owner[address] = node

    def forget_node(self, node: str) -> None:
        self.set_addresses(node, ())
        self._addresses.pop(node, None)

    def replace_nodes(self, nodes: dict[str, tuple[Iterable[str], bool]]) -> None:
        """A full relist, node → (addresses, edge): nodes not in `nodes` are forgotten."""
        for node in set(self._addresses) - set(nodes):
            self.forget_node(node)
        for node, (addresses, edge) in nodes.items():
            self.set_addresses(node, addresses, edge=edge)

    def is_edge(self, node: str) -> bool:
        """Labelled an edge node, or served by an agent: never dialled directly."""
        return node in self._edge or node in self._sessions

    def addresses(self, node: str) -> frozenset[str]:
        return self._addresses.get(node, frozenset())

    # --- lookups ----------------------------------------------------------------------------------

    def node_for(self, host: str) -> str | None:
        """The node a target host names: an address of a known node, else a node name an agent serves."""
        owner = self._owner.get(host)
        if owner is not None:
            return owner
        if host in self._sessions or host in self._addresses:
            return host
        return None

    def pick(self, host: str) -> tuple[str | None, S | None]:
        """(node, newest session serving it); (None, None) when the host is no edge node we know."""
        node = self.node_for(host)
        if node is None:
            return None, None
        sessions = self._sessions.get(node)
        return node, (sessions[-1] if sessions else None)
