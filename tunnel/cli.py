"""The `yurt-tunnel-server` and `yurt-tunnel-agent` commands."""

from __future__ import annotations

import argparse
import sys


def build_server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurt-tunnel-server",
        description="Cloud end of the reverse tunnel: accepts edge agents and serves kube-apiserver's "
        "egress selector (HTTP CONNECT) to reach edge nodes through them.",
    )
    agents = parser.add_argument_group("agents")
    agents.add_argument(
        "--agent-bind-address",
        default="0.0.0.0",  # noqa: S104 - agents dial in from the edge: all interfaces is the point
        help="address agents dial (websocket over TLS)",
    )
    agents.add_argument("--agent-port", type=int, default=10262)
    front = parser.add_argument_group("front end")
    front.add_argument("--connect-port", type=int, default=10263, help="HTTP CONNECT port for kube-apiserver")
    front.add_argument("--connect-uds", default="", help="serve HTTP CONNECT on this Unix socket instead")
    return parser


def build_agent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurt-tunnel-agent",
        description="Edge end of the reverse tunnel: dials the tunnel server and opens connections to "
        "allow-listed local targets on its behalf.",
    )
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--server-addr", required=True, help="tunnel server address(es), host:port, comma-separated")
    parser.add_argument("--allowed-ports", default="10250", help="local ports the cloud may reach")
    return parser


def _not_yet(prog: str) -> int:
    print(f"{prog}: this build does not run the tunnel yet (it lands with the tunnel issue)", file=sys.stderr)
    return 2


def server_main(argv: list[str] | None = None) -> int:
    build_server_parser().parse_args(argv)
    return _not_yet("yurt-tunnel-server")


def agent_main(argv: list[str] | None = None) -> int:
    build_agent_parser().parse_args(argv)
    return _not_yet("yurt-tunnel-agent")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("server", "agent"):
        print("usage: python -m tunnel {server,agent} [options]", file=sys.stderr)
        return 2
    run = server_main if args[0] == "server" else agent_main
    return run(args[1:])
