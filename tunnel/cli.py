"""The `yurt-tunnel-server` and `yurt-tunnel-agent` commands (and `python -m tunnel {server,agent}`).

`<command> status [--address host:port]` prints what a running instance reports on its `/v1/status`.
Exit codes: 0 stopped on request, 1 failed while running, 2 settings that cannot work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

from tunnel import agent, config, connect, errors, heap, routes, server

log = logging.getLogger(__name__)


def _ports(text: str) -> frozenset[int]:
    try:
        ports = frozenset(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ports") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r}: ports are 1 to 65535")
    return ports


def _names(text: str) -> frozenset[str]:
    return frozenset(n.strip() for n in text.split(",") if n.strip())


def build_server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurt-tunnel-server",
        description="Cloud end of the reverse tunnel: accepts edge agents and serves kube-apiserver's "
        "egress selector (HTTP CONNECT) to reach edge nodes through them.",
    )
    parser.add_argument(
        "--server-id", default=os.environ.get("POD_NAME", ""), help="replica id (default: $POD_NAME or host name)"
    )
    agents = parser.add_argument_group("agents (websocket over mutual TLS)")
    agents.add_argument(
        "--agent-bind-address",
        default="0.0.0.0",  # noqa: S104 - agents dial in from the edge: all interfaces is the point
    )
    agents.add_argument("--agent-port", type=int, default=10262)
    agents.add_argument("--agent-cert", required=True, help="serving certificate agents verify (PEM)")
    agents.add_argument("--agent-key", required=True)
    agents.add_argument("--agent-ca", required=True, help="CA of the agents' node client certificates (cluster CA)")
    front = parser.add_argument_group("front end (HTTP CONNECT for kube-apiserver's egress selector)")
    front.add_argument("--connect-bind-address", default="0.0.0.0")  # noqa: S104 - the apiserver may be elsewhere
    front.add_argument("--connect-port", type=int, default=10263, help="HTTP CONNECT over mutual TLS; 0 disables")
    front.add_argument("--connect-cert", default="", help="serving certificate kube-apiserver verifies (caBundle)")
    front.add_argument("--connect-key", default="")
    front.add_argument("--connect-ca", default="", help="CA of kube-apiserver's client certificate")
    front.add_argument(
        "--connect-allowed-names",
        type=_names,
        default=frozenset(),
        help="client certificate CNs allowed to CONNECT, comma-separated (kube-apiserver's egress client); "
        "required with --connect-port unless --connect-allow-any-client",
    )
    front.add_argument(
        "--connect-allow-any-client",
        action="store_true",
        help="let any client certificate --connect-ca signed CONNECT (the cluster CA signs every kubelet's)",
    )
    front.add_argument(
        "--status-on-connect",
        action="store_true",
        help="also answer GET /v1/status on the CONNECT TLS port to the clients allowed to CONNECT",
    )
    front.add_argument("--connect-uds", default="", help="also serve HTTP CONNECT on this Unix socket (mode 0600)")
    routing = parser.add_argument_group("routing")
    routing.add_argument("--kubeconfig", default="", help="where to watch Node addresses (default: in-cluster)")
    routing.add_argument(
        "--no-direct-fallback",
        dest="direct_fallback",
        action="store_false",
        help="refuse targets that are not edge nodes instead of dialling them directly",
    )
    routing.add_argument(
        "--edge-cidrs",
        type=_names,
        default=frozenset(),
        help="only addresses inside these networks (comma-separated CIDRs) are routed to agents (default: any "
        "address an edge node lists that no cloud node has)",
    )
    routing.add_argument("--edge-label", default="openyurt.io/is-edge-worker")
    routing.add_argument("--dial-timeout", type=float, default=10.0, metavar="SECONDS")
    limits = parser.add_argument_group("limits and keepalive")
    limits.add_argument("--max-streams-per-agent", type=int, default=1024)
    limits.add_argument(
        "--max-pending-dials", type=int, default=256, help="dials in progress at once, through agents or direct"
    )
    limits.add_argument(
        "--max-queued-bytes",
        type=int,
        default=1024 * 1024,
        help="control frames queued for an agent that does not read; past it the agent is not read from",
    )
    limits.add_argument(
        "--agent-pings-per-second", type=float, default=10.0, help="tunnel PINGs answered per agent per second"
    )
    limits.add_argument("--keepalive", type=float, default=15.0, metavar="SECONDS")
    serving = parser.add_argument_group("health, metrics and status")
    serving.add_argument("--serve-address", default="0.0.0.0")  # noqa: S104 - probes come from the kubelet
    serving.add_argument(
        "--serve-port", type=int, default=10265, help="/healthz, /readyz, /metrics; /v1/status to loopback only"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def build_agent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurt-tunnel-agent",
        description="Edge end of the reverse tunnel: dials the tunnel server and opens connections to "
        "allow-listed local targets on its behalf.",
    )
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--server-addr", required=True, help="tunnel server address(es), host:port, comma-separated")
    parser.add_argument(
        "--server-name", default="", help="name the server certificate must carry (default: each address's host)"
    )
    tls = parser.add_argument_group("identity")
    tls.add_argument("--ca-file", required=True, help="CA of the server certificate")
    tls.add_argument(
        "--cert-file",
        default="/var/lib/kubelet/pki/kubelet-client-current.pem",
        help="client certificate naming this node (default: kubelet's)",
    )
    tls.add_argument("--key-file", default="", help="key, when not in --cert-file")
    reach = parser.add_argument_group("what the cloud may reach")
    reach.add_argument(
        "--allowed-ports", type=_ports, default=frozenset({10250}), help="comma-separated (default 10250)"
    )
    reach.add_argument(
        "--node-ip", type=_names, default=frozenset(), help="this node's addresses the cloud may name, comma-separated"
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--dial-timeout", type=float, default=5.0, metavar="SECONDS")
    tuning.add_argument("--keepalive", type=float, default=15.0, metavar="SECONDS")
    tuning.add_argument("--backoff-max", type=float, default=10.0, metavar="SECONDS")
    serving = parser.add_argument_group("health, metrics and status")
    serving.add_argument("--serve-address", default="127.0.0.1")
    serving.add_argument("--serve-port", type=int, default=10266)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)


def _require(path: str, what: str) -> None:
    if not path:
        raise errors.ConfigError(f"{what} is required")
    if not Path(path).is_file():
        raise errors.ConfigError(f"{what} {path} does not exist")


def server_settings(args: argparse.Namespace) -> config.ServerSettings:
    for path, what in (
        (args.agent_cert, "--agent-cert"),
        (args.agent_key, "--agent-key"),
        (args.agent_ca, "--agent-ca"),
    ):
        _require(path, what)
    if args.connect_port:
        for path, what in (
            (args.connect_cert, "--connect-cert"),
            (args.connect_key, "--connect-key"),
            (args.connect_ca, "--connect-ca"),
        ):
            _require(path, f"{what} (with --connect-port; use --connect-port 0 for the Unix socket only)")
        if not args.connect_allowed_names and not args.connect_allow_any_client:
            raise errors.ConfigError(
                "--connect-allowed-names is required with --connect-port: the CNs of the client certificates "
                "allowed to CONNECT (kube-apiserver's egress client); --connect-allow-any-client admits any "
                "certificate --connect-ca signed"
            )
    if args.status_on_connect and not args.connect_port:
        raise errors.ConfigError("--status-on-connect needs --connect-port")
    if not args.connect_port and not args.connect_uds:
        raise errors.ConfigError("nothing to serve kube-apiserver on: give --connect-port or --connect-uds")
    try:
        routes.parse_cidrs(args.edge_cidrs)
    except ValueError as exc:
        raise errors.ConfigError(f"--edge-cidrs: {exc}") from None
    if args.max_queued_bytes < 64 * 1024 or args.agent_pings_per_second <= 0:
        raise errors.ConfigError("--max-queued-bytes is at least 65536 and --agent-pings-per-second above 0")
    return config.ServerSettings(
        server_id=args.server_id or os.uname().nodename,
        agent_address=args.agent_bind_address,
        agent_port=args.agent_port,
        agent_cert=args.agent_cert,
        agent_key=args.agent_key,
        agent_ca=args.agent_ca,
        connect_address=args.connect_bind_address,
        connect_port=args.connect_port,
        connect_cert=args.connect_cert,
        connect_key=args.connect_key,
        connect_ca=args.connect_ca,
        connect_allowed_names=args.connect_allowed_names,
        connect_allow_any_client=args.connect_allow_any_client,
        status_on_connect=args.status_on_connect,
        connect_uds=args.connect_uds,
        serve_address=args.serve_address,
        serve_port=args.serve_port,
        kubeconfig=args.kubeconfig,
        direct_fallback=args.direct_fallback,
        edge_cidrs=tuple(sorted(args.edge_cidrs)),
        edge_label=args.edge_label,
        dial_timeout_s=args.dial_timeout,
        max_streams_per_agent=args.max_streams_per_agent,
        max_pending_dials=args.max_pending_dials,
        max_queued_bytes=args.max_queued_bytes,
        agent_pings_per_s=args.agent_pings_per_second,
        keepalive_s=args.keepalive,
    )


def agent_settings(args: argparse.Namespace) -> config.AgentSettings:
    _require(args.ca_file, "--ca-file")
    _require(args.cert_file, "--cert-file")
    if args.key_file:
        _require(args.key_file, "--key-file")
    servers = tuple(s.strip() for s in args.server_addr.split(",") if s.strip())
    try:
        for address in servers:
            connect.parse_target(address)
    except errors.BadConnect as exc:
        raise errors.ConfigError(f"--server-addr: {exc.message}") from None
    if not servers:
        raise errors.ConfigError("--server-addr names no server")
    return config.AgentSettings(
        node_name=args.node_name,
        servers=servers,
        server_name=args.server_name,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        allowed_ports=args.allowed_ports,
        node_addresses=args.node_ip,
        dial_timeout_s=args.dial_timeout,
        keepalive_s=args.keepalive,
        backoff_max_s=args.backoff_max,
        serve_address=args.serve_address,
        serve_port=args.serve_port,
    )


def _run_until_signal(main: Any) -> int:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    heap.tune()
    try:
        # uvloop: the same asyncio API on libuv, with its own transports and TLS. Measured on the tunnel's hot
        # path (bench/tunnel_bench.py), it cuts the added echo latency by about a third, raises throughput and
        # lowers the server's memory per idle agent; the profile showed most time in the event loop's socket
        # and TLS plumbing, not in the tunnel's own framing.
        uvloop.run(runner())
    except (OSError, ssl.SSLError, errors.ConfigError) as exc:
        log.error("stopped: %s", exc)
        return 1
    return 0


def status_main(prog: str, default_port: int, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{prog} status", description="Print what a running instance reports.")
    parser.add_argument("--address", default=f"127.0.0.1:{default_port}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        with urllib.request.urlopen(f"http://{args.address}/v1/status", timeout=5) as resp:
            report: dict[str, Any] = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{prog} status: cannot reach {args.address}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    elif "agents" in report:
        print(
            f"server {report['server']}: {len(report['agents'])} agent connection(s), "
            f"{report['pendingDials']} dial(s) pending"
        )
        print(f"{'NODE':<24} {'REMOTE':<22} {'STREAMS':>7} {'OPENED':>7}  SINCE")
        for a in report["agents"]:
            print(f"{a['node']:<24} {a['remote']:<22} {a['streams']:>7} {a['streamsOpened']:>7}  {a['connectedSince']}")
    else:
        print(f"agent for node {report['node']}: allowed ports {','.join(map(str, report['allowedPorts']))}")
        print(f"{'SERVER':<28} {'ENDPOINT':<22} {'STREAMS':>7}  SINCE")
        for srv in report["servers"]:
            print(f"{srv['server']:<28} {srv['endpoint']:<22} {srv['streams']:>7}  {srv['connectedSince']}")
        for endpoint, error in report["lastErrors"].items():
            print(f"last error {endpoint}: {error}")
    return 0


def server_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status_main("yurt-tunnel-server", 10265, argv[1:])
    args = build_server_parser().parse_args(argv)
    _logging(args.verbose)
    try:
        settings = server_settings(args)
    except errors.ConfigError as exc:
        print(f"yurt-tunnel-server: {exc}", file=sys.stderr)
        return 2
    return _run_until_signal(server.Server(settings).run)


def agent_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status_main("yurt-tunnel-agent", 10266, argv[1:])
    args = build_agent_parser().parse_args(argv)
    _logging(args.verbose)
    try:
        settings = agent_settings(args)
    except errors.ConfigError as exc:
        print(f"yurt-tunnel-agent: {exc}", file=sys.stderr)
        return 2
    return _run_until_signal(agent.Agent(settings).run)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("server", "agent"):
        print("usage: python -m tunnel {server,agent} [options]", file=sys.stderr)
        return 2
    run = server_main if args[0] == "server" else agent_main
    return run(args[1:])
