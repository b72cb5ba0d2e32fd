"""The `yurthub` command: flags grouped by concern, turned into `config.HubSettings` once."""

from __future__ import annotations

import argparse
import sys

from yurthub import config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurthub",
        description="Caching proxy between an edge node's components and the cloud kube-apiserver(s).",
    )
    cloud = parser.add_argument_group("cloud")
    cloud.add_argument(
        "--server-addr", required=True, help="kube-apiserver URLs, comma-separated, by priority"
    )
    cloud.add_argument("--lb-mode", choices=[m.value for m in config.LoadBalancingMode], default="rr")
    cloud.add_argument("--heartbeat-interval-seconds", type=float, default=10.0)
    cloud.add_argument("--heartbeat-timeout-seconds", type=float, default=2.0)
    cloud.add_argument("--heartbeat-failed-retry", type=int, default=3)
    cloud.add_argument("--heartbeat-healthy-threshold", type=int, default=2)
    node = parser.add_argument_group("node")
    node.add_argument("--node-name", required=True, help="name of the node this yurthub serves")
    listen = parser.add_argument_group("listen")
    listen.add_argument("--bind-address", default="127.0.0.1")
    listen.add_argument(
        "--proxy-port", type=int, default=10261, help="plain HTTP proxy port for node components"
    )
    listen.add_argument("--serve-port", type=int, default=10267, help="healthz, readyz and metrics port")
    cache = parser.add_argument_group("cache")
    cache.add_argument("--disk-cache-path", default="/var/lib/yurthub/cache")
    cache.add_argument(
        "--cache-agents",
        default="kubelet,kube-proxy,coredns,flanneld,yurt-tunnel-agent",
        help="comma-separated client components whose responses are cached; '*' for all",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> config.HubSettings:
    return config.HubSettings(
        node_name=args.node_name,
        cloud=config.CloudSettings(
            servers=config.parse_servers(args.server_addr),
            lb_mode=config.LoadBalancingMode(args.lb_mode),
            heartbeat_interval_s=args.heartbeat_interval_seconds,
            heartbeat_timeout_s=args.heartbeat_timeout_seconds,
            heartbeat_failed_retry=args.heartbeat_failed_retry,
            heartbeat_healthy_threshold=args.heartbeat_healthy_threshold,
        ),
        listen=config.ListenSettings(
            bind_address=args.bind_address,
            proxy_port=config.check_port("--proxy-port", args.proxy_port),
            serve_port=config.check_port("--serve-port", args.serve_port),
        ),
        cache=config.CacheSettings(
            disk_cache_path=args.disk_cache_path,
            cache_agents=tuple(a.strip() for a in args.cache_agents.split(",") if a.strip()),
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except config.ConfigError as exc:
        parser.error(str(exc))
    print(
        f"yurthub: settings for node {settings.node_name} are valid, but this build does not serve yet "
        "(the proxy lands with the yurthub proxy issue)",
        file=sys.stderr,
    )
    return 2
