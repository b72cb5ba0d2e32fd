"""Settings of the tunnel server and agent: frozen, keyword-only, built once by `cli` and passed down."""

from __future__ import annotations

import dataclasses

NODE_CN_PREFIX = "system:node:"
"""Agents authenticate with a node client certificate (CN `system:node:<name>`, as kubelet's)."""
NODE_HEADER = "X-Yurt-Tunnel-Node"
"""The node an agent says it serves; it must be the one its certificate names."""
SERVER_HEADER = "X-Yurt-Tunnel-Server"
"""The replica id a server answers with, so an agent holds one connection per replica."""
AGENT_PATH = "/v1/agent"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerSettings:
    server_id: str
    """This replica's id (pod name in the chart); agents keep one connection per id."""
    agent_address: str = "0.0.0.0"  # noqa: S104 - agents dial in from the edge
    agent_port: int = 10262
    agent_cert: str
    """Serving certificate and key agents verify (PEM files)."""
    agent_key: str
    agent_ca: str
    """CA that signed the agents' client certificates (the cluster CA for kubelet certificates)."""
    connect_address: str = "0.0.0.0"  # noqa: S104 - kube-apiserver may run on another host
    connect_port: int = 10263
    """HTTP CONNECT over TLS for kube-apiserver's egress selector; 0 disables it."""
    connect_cert: str = ""
    connect_key: str = ""
    connect_ca: str = ""
    """CA of the client certificate kube-apiserver presents; required with `connect_port`."""
    connect_allowed_names: frozenset[str] = frozenset()
    """Certificate CNs allowed to CONNECT; empty only with `connect_allow_any_client`."""
    connect_allow_any_client: bool = False
    """Let any certificate `connect_ca` signed CONNECT (the CLI refuses to start with neither this nor names)."""
    connect_uds: str = ""
    """HTTP CONNECT on this Unix socket (mode 0600) as well."""
    serve_address: str = "0.0.0.0"  # noqa: S104 - probes and Prometheus scrape from the cluster network
    serve_port: int = 10265
    """`/healthz`, `/readyz`, `/metrics` (plain HTTP); `/v1/status` there answers loopback clients only."""
    status_on_connect: bool = False
    """Also answer `GET /v1/status` on the CONNECT TLS port, to clients `connect_allowed_names` admits."""
    kubeconfig: str = ""
    """Where to watch Node objects (node addresses → agent); empty: in-cluster if there, else names only."""
    direct_fallback: bool = True
    """Dial targets that are not edge nodes (cloud kubelets, webhooks) directly, as the apiserver would; never
    loopback, link-local, unspecified or cloud metadata addresses (names are resolved and every address judged)."""
    edge_cidrs: tuple[str, ...] = ()
    """When given, only addresses inside these networks (and edge node names) are routed to agents."""
    edge_label: str = "openyurt.io/is-edge-worker"
    """Nodes with this label `true` are only ever reached through their agent."""
    dial_timeout_s: float = 10.0
    max_streams_per_agent: int = 1024
    max_pending_dials: int = 256
    """CONNECTs dialling at once (through an agent or directly); beyond it the answer is 503."""
    max_queued_bytes: int = 1024 * 1024
    """Control frames queued for one agent that does not read; past it the agent is not read from."""
    agent_pings_per_s: float = 10.0
    """An agent's tunnel PINGs answered per second; one that keeps sending faster is closed."""
    duplicate_check_s: float = 5.0
    """How long a live agent connection has to answer a ping when a second one for its node arrives."""
    keepalive_s: float = 15.0
    """Websocket ping interval; a peer silent for as long again is dropped."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentSettings:
    node_name: str
    servers: tuple[str, ...]
    """`host:port` of the server replicas; a name resolving to several addresses is one replica each."""
    ca_file: str
    """CA that signed the server's certificate."""
    cert_file: str
    """Client certificate naming this node (kubelet's `kubelet-client-current.pem` holds cert and key)."""
    key_file: str = ""
    server_name: str = ""
    """Name to verify the server certificate against; default: the host of each server address."""
    allowed_ports: frozenset[int] = frozenset({10250})
    """Local ports the cloud may reach; never anything else."""
    node_addresses: frozenset[str] = frozenset()
    """This node's own addresses the cloud may name as targets (besides loopback and the node name)."""
    serve_address: str = "127.0.0.1"
    serve_port: int = 10266
    """`/healthz`, `/readyz`, `/metrics`, `/v1/status` (plain HTTP, loopback by default); -1: none."""
    dial_timeout_s: float = 5.0
    keepalive_s: float = 15.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 10.0
    resolve_interval_s: float = 30.0
    """How often server names are resolved again to find new replicas."""
