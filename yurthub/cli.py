"""The `yurthub` command: flags (or a config file) grouped by concern, turned into settings once.

yurthub --server-addr https://10.0.0.1:6443 --node-name edge-1 --ca-file ... --client-cert ...
yurthub --server-addr https://10.0.0.1:6443 --node-name edge-1 --join-token-file /etc/yurthub/join-token
yurthub --config /etc/yurthub/config.yaml
yurthub status                       what this node's yurthub is doing, at a glance
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

import yaml

from yurthub import certificate, config, filters, server

log = logging.getLogger(__name__)
DEFAULT_AGENTS = "kubelet,kube-proxy,coredns,flanneld,yurt-tunnel-agent"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurthub",
        description="Caching proxy between an edge node's components and the cloud kube-apiserver(s). "
        "'yurthub status' shows what a running yurthub is doing.",
    )
    parser.add_argument(
        "--config",
        help="YAML or JSON file of settings named like the flags (node-name: ...); flags given on the command line win",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every state change and request error")
    cloud = parser.add_argument_group("cloud")
    cloud.add_argument("--server-addr", help="kube-apiserver URLs, comma-separated, by priority (required)")
    cloud.add_argument("--lb-mode", choices=[m.value for m in config.LoadBalancingMode], default="rr")
    cloud.add_argument("--heartbeat-interval-seconds", type=float, default=10.0)
    cloud.add_argument("--heartbeat-timeout-seconds", type=float, default=2.0)
    cloud.add_argument("--heartbeat-failed-retry", type=int, default=3)
    cloud.add_argument("--heartbeat-healthy-threshold", type=int, default=2)
    cloud.add_argument("--request-timeout-seconds", type=float, default=30.0)
    node = parser.add_argument_group(
        "identity",
        "With a bootstrap token (--join-token-file, or --bootstrap-file) yurthub gets its own client certificate "
        "by CSR and rotates it; without one it uses --client-cert (the kubelet's, by default).",
    )
    node.add_argument("--node-name", help="name of the node this yurthub serves (required)")
    node.add_argument("--ca-file", default="/etc/kubernetes/pki/ca.crt", help="CA of the apiserver's certificate")
    node.add_argument(
        "--client-cert",
        default="/var/lib/kubelet/pki/kubelet-client-current.pem",
        help="node client certificate (PEM, may include the key) when no bootstrap token is given",
    )
    node.add_argument("--client-key", default="", help="key of --client-cert when in a file of its own")
    node.add_argument(
        "--join-token-file",
        default="",
        metavar="FILE",
        help="file holding the bootstrap token <id>.<secret> to ask for a certificate with (owner-only, 0600); "
        "read again when it changes. The way to pass the token",
    )
    node.add_argument(
        "--join-token",
        default="",
        help="the bootstrap token itself; discouraged: every user sees it in the process list, use --join-token-file",
    )
    node.add_argument("--bootstrap-file", default="", help="kubeconfig whose user holds a bootstrap token")
    node.add_argument("--root-dir", default="/var/lib/yurthub", help="yurthub's certificates go to <root-dir>/pki")
    node.add_argument(
        "--serving-cert",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask for a serving certificate (kubelet-serving signer) for the HTTPS door; an admin or "
        "yurt-manager approves it",
    )
    node.add_argument(
        "--serving-ip-addresses",
        default="169.254.2.1",
        help="IP SANs of the serving certificate besides the node IP: the door's address, where pods reach it",
    )
    node.add_argument("--node-ip", default="", help="node IP for the serving certificate (default: the route's)")
    node.add_argument("--csr-poll-seconds", type=float, default=2.0, help="how often to look at a pending CSR")
    listen = parser.add_argument_group("listen")
    listen.add_argument("--bind-address", default="127.0.0.1", help="loopback address for both ports")
    listen.add_argument("--proxy-port", type=int, default=10261, help="plain HTTP proxy port for node components")
    listen.add_argument("--serve-port", type=int, default=10267, help="healthz, readyz, metrics and status port")
    cache = parser.add_argument_group("cache")
    cache.add_argument("--disk-cache-path", default="/var/lib/yurthub/cache")
    cache.add_argument(
        "--cache-agents",
        default=DEFAULT_AGENTS,
        help="comma-separated client components whose responses are cached; '*' for all",
    )
    box = parser.add_argument_group("outbox")
    box.add_argument("--outbox-path", default="/var/lib/yurthub/outbox")
    box.add_argument("--outbox-capacity", type=int, default=1000)
    _filter_flags(parser)
    _door_flags(parser)
    _limit_flags(parser)
    return parser


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    d = config.LimitSettings()
    group = parser.add_argument_group(
        "limits", "what any local client or pod can make yurthub hold (bytes unless said otherwise)"
    )
    group.add_argument("--max-request-body", type=int, default=d.max_request_body, help="plain port (413 past it)")
    group.add_argument("--max-door-request-body", type=int, default=d.max_door_request_body, help="HTTPS door")
    group.add_argument(
        "--max-bytes-in-memory",
        type=int,
        default=d.max_bytes_in_memory,
        help="request bodies and whole answers held at once, node wide (429 with Retry-After past it)",
    )
    group.add_argument(
        "--max-list-buffer-bytes",
        type=int,
        default=d.max_list_buffer_bytes,
        help="list bodies buffered for the cache at once (past it a list is relayed but not cached)",
    )
    group.add_argument("--retry-after-seconds", type=int, default=d.retry_after_s, help="Retry-After of a 429")
    group.add_argument("--max-list-digests", type=int, default=d.max_list_digests, help="lists remembered by digest")
    group.add_argument(
        "--max-views-per-scope", type=int, default=d.max_views_per_scope, help="cached list views per scope"
    )
    group.add_argument(
        "--max-inflight-pod",
        type=int,
        default=d.max_inflight_pod,
        help="non-watch requests from the HTTPS door in flight at once (429 with Retry-After past it)",
    )
    group.add_argument(
        "--max-inflight-other",
        type=int,
        default=d.max_inflight_other,
        help="non-watch plain-port requests that are not a node component's in flight at once (429 past it); "
        "node components (cache agents without their own token, from a process of --node-uids) are never limited",
    )
    group.add_argument(
        "--max-inflight-per-pod",
        type=int,
        default=d.max_inflight_per_pod,
        help="of --max-inflight-pod, how many one source address, and one token, may hold at once on the "
        "HTTPS door (429 with Retry-After past it); never applies to the plain port",
    )
    group.add_argument(
        "--max-concurrent-non-node",
        type=int,
        default=d.max_concurrent_non_node,
        help="of the pod and other requests admitted, how many are served at once, node wide; the rest wait "
        "their turn in arrival order (node components never wait)",
    )
    group.add_argument(
        "--max-queue-wait-seconds",
        type=float,
        default=d.max_queue_wait_s,
        help="how long a pod or other request waits for its turn before 429 with Retry-After",
    )
    group.add_argument(
        "--node-uids",
        default="",
        help="comma-separated user ids whose local processes are the node's own components on the plain port "
        "(a cache agent's request is never limited, and kubelet's offline writes are accepted, only from a "
        "process of one of these users; default: 0 and the user yurthub runs as)",
    )
    group.add_argument(
        "--token-scope-idle-seconds",
        type=float,
        default=d.token_scope_idle_s,
        help="a token's cache scope unused this long, while the cloud is reachable, is removed",
    )


def _filter_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "response filters",
        "defaults: "
        + "; ".join(f"{name}={','.join(targets)}" for name, targets in filters.DEFAULT_RULES.items())
        + ". Filtered requests are fetched and answered as JSON.",
    )
    group.add_argument("--enable-resource-filter", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME=COMPONENT[/RESOURCE],...",
        help="who gets filter NAME (replaces its defaults; 'NAME=' turns it off); repeatable",
    )
    group.add_argument("--disabled-resource-filters", default="", help="comma-separated filters to turn off")
    group.add_argument("--nodepool-label", default="apps.openyurt.io/nodepool", help="node label naming its pool")


def _door_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "https door for pods", "TLS port for pods' in-cluster config; shut unless --secure-cert-file is given"
    )
    group.add_argument("--secure-cert-file", default="", help="serving certificate (PEM, may include the key)")
    group.add_argument("--secure-key-file", default="", help="its key, when in a file of its own")
    group.add_argument("--dummy-if-ip", default="169.254.2.1", help="address of the door, and of the dummy interface")
    group.add_argument("--proxy-secure-port", type=int, default=10268, help="port of the door")
    group.add_argument(
        "--enable-dummy-if",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="create the dummy interface at start and remove it at stop (off: --dummy-if-ip must exist)",
    )
    group.add_argument("--dummy-if-name", default="yurthub0")
    group.add_argument(
        "--secure-tls-ciphers",
        default="",
        help="OpenSSL cipher string for the door, for old pod clients (default: OpenSSL's, TLS 1.2 or newer)",
    )


def _load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise config.ConfigError(f"--config {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise config.ConfigError(f"--config {path}: expected a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        values = _load_file(first.config)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise config.ConfigError(f"--config {first.config}: unknown settings {unknown}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def _loopback(address: str) -> str:
    try:
        if ipaddress.ip_address(address).is_loopback:
            return address
    except ValueError:
        pass
    raise config.ConfigError(
        f"--bind-address {address}: the plain proxy port acts with the node's identity, so it only binds "
        "to a loopback address"
    )


def settings_from_args(args: argparse.Namespace) -> config.HubSettings:
    if not args.server_addr:
        raise config.ConfigError("--server-addr is required")
    if not args.node_name:
        raise config.ConfigError("--node-name is required")
    return config.HubSettings(
        node_name=args.node_name,
        cloud=config.CloudSettings(
            servers=config.parse_servers(args.server_addr),
            lb_mode=config.LoadBalancingMode(args.lb_mode),
            heartbeat_interval_s=args.heartbeat_interval_seconds,
            heartbeat_timeout_s=args.heartbeat_timeout_seconds,
            heartbeat_failed_retry=args.heartbeat_failed_retry,
            heartbeat_healthy_threshold=args.heartbeat_healthy_threshold,
            request_timeout_s=args.request_timeout_seconds,
        ),
        listen=config.ListenSettings(
            bind_address=_loopback(args.bind_address),
            proxy_port=config.check_port("--proxy-port", args.proxy_port),
            serve_port=config.check_port("--serve-port", args.serve_port),
        ),
        cache=config.CacheSettings(
            disk_cache_path=args.disk_cache_path,
            cache_agents=tuple(a.strip().lower() for a in args.cache_agents.split(",") if a.strip()),
        ),
        identity=identity_settings(args),
        outbox=config.OutboxSettings(path=args.outbox_path, capacity=args.outbox_capacity),
        filters=_filter_settings(args),
        door=_door_settings(args),
        limits=_limit_settings(args),
    )


def _limit_settings(args: argparse.Namespace) -> config.LimitSettings:
    values = {
        "--max-request-body": args.max_request_body,
        "--max-door-request-body": args.max_door_request_body,
        "--max-bytes-in-memory": args.max_bytes_in_memory,
        "--max-list-buffer-bytes": args.max_list_buffer_bytes,
        "--retry-after-seconds": args.retry_after_seconds,
        "--max-list-digests": args.max_list_digests,
        "--max-views-per-scope": args.max_views_per_scope,
        "--token-scope-idle-seconds": args.token_scope_idle_seconds,
        "--max-inflight-pod": args.max_inflight_pod,
        "--max-inflight-other": args.max_inflight_other,
        "--max-inflight-per-pod": args.max_inflight_per_pod,
        "--max-concurrent-non-node": args.max_concurrent_non_node,
        "--max-queue-wait-seconds": args.max_queue_wait_seconds,
    }
    for flag, value in values.items():
        if value <= 0:
            raise config.ConfigError(f"{flag}: must be positive, not {value}")
    uids = config.parse_uids(args.node_uids)
    return config.LimitSettings(
        node_uids=config.LimitSettings().node_uids if uids is None else uids,
        max_request_body=args.max_request_body,
        max_door_request_body=args.max_door_request_body,
        max_bytes_in_memory=args.max_bytes_in_memory,
        max_list_buffer_bytes=args.max_list_buffer_bytes,
        retry_after_s=args.retry_after_seconds,
        max_list_digests=args.max_list_digests,
        max_views_per_scope=args.max_views_per_scope,
        token_scope_idle_s=args.token_scope_idle_seconds,
        max_inflight_pod=args.max_inflight_pod,
        max_inflight_other=args.max_inflight_other,
        max_inflight_per_pod=args.max_inflight_per_pod,
        max_concurrent_non_node=args.max_concurrent_non_node,
        max_queue_wait_s=args.max_queue_wait_seconds,
    )


def _filter_settings(args: argparse.Namespace) -> config.FilterSettings:
    disabled = [n.strip() for n in str(args.disabled_resource_filters).split(",") if n.strip()]
    rules = filters.parse_rules(args.filter or [], disabled)
    return config.FilterSettings(
        enabled=args.enable_resource_filter,
        rules=tuple((name, targets) for name, targets in rules.items() if targets),
        nodepool_label=args.nodepool_label,
    )


def _door_settings(args: argparse.Namespace) -> config.DoorSettings:
    try:
        ipaddress.ip_address(args.dummy_if_ip)
    except ValueError:
        raise config.ConfigError(f"--dummy-if-ip {args.dummy_if_ip!r} is not an IP address") from None
    if not 0 < len(args.dummy_if_name) <= 15:
        raise config.ConfigError(f"--dummy-if-name {args.dummy_if_name!r}: interface names have 1 to 15 characters")
    if args.secure_tls_ciphers:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(args.secure_tls_ciphers)
        except ssl.SSLError:
            raise config.ConfigError(
                f"--secure-tls-ciphers {args.secure_tls_ciphers!r}: OpenSSL knows no such ciphers"
            ) from None
    return config.DoorSettings(
        cert_file=args.secure_cert_file,
        key_file=args.secure_key_file,
        address=args.dummy_if_ip,
        port=config.check_port("--proxy-secure-port", args.proxy_secure_port),
        manage_interface=args.enable_dummy_if,
        interface=args.dummy_if_name,
        tls_ciphers=args.secure_tls_ciphers,
    )


def _bootstrap_token(args: argparse.Namespace) -> str:
    token = str(args.join_token or "")
    if token and args.join_token_file:
        raise config.ConfigError("--join-token and --join-token-file: give the token one way only (the file)")
    if args.join_token_file:
        config.read_token_file(args.join_token_file)  # refuse a bad file at start; identity reads it when needed
    if args.bootstrap_file:
        try:
            with open(args.bootstrap_file, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
            users = [u.get("user") or {} for u in doc.get("users") or []]
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            raise config.ConfigError(f"--bootstrap-file {args.bootstrap_file}: {exc}") from exc
        tokens = [str(u["token"]) for u in users if isinstance(u, dict) and u.get("token")]
        if not tokens:
            raise config.ConfigError(f"--bootstrap-file {args.bootstrap_file}: no user with a token in it")
        token = token or tokens[0]
    if token:
        token = config.parse_bootstrap_token(token, "bootstrap token")
    return token


def token_on_command_line(argv: list[str]) -> bool:
    """Whether `argv` carries the bootstrap token itself (`--join-token`), where any user can read it."""
    return any(a == "--join-token" or a.startswith("--join-token=") for a in argv)


def _ips(flag: str, value: str) -> tuple[str, ...]:
    ips = tuple(v.strip() for v in value.split(",") if v.strip())
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise config.ConfigError(f"{flag}: {ip!r} is not an IP address") from None
    return ips


def identity_settings(args: argparse.Namespace) -> config.IdentitySettings:
    if args.csr_poll_seconds <= 0:
        raise config.ConfigError("--csr-poll-seconds: must be positive")
    return config.IdentitySettings(
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        bootstrap_token=_bootstrap_token(args),
        bootstrap_token_file=args.join_token_file,
        root_dir=args.root_dir.rstrip("/") or "/",
        serving_cert=args.serving_cert,
        serving_ip_addresses=_ips("--serving-ip-addresses", args.serving_ip_addresses),
        node_ip=(_ips("--node-ip", args.node_ip) or ("",))[0],
        csr_poll_s=args.csr_poll_seconds,
    )


def status_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="yurthub status", description="What the local yurthub is doing.")
    parser.add_argument("--serve-address", default="127.0.0.1:10267", help="yurthub's serve port")
    parser.add_argument("--json", action="store_true", help="print the raw report")
    args = parser.parse_args(argv)
    try:
        with urllib.request.urlopen(f"http://{args.serve_address}/v1/status", timeout=5) as resp:
            report = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"yurthub status: cannot reach yurthub at {args.serve_address}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    cloud = report["cloud"]
    print(f"node {report['node']}: cloud {'reachable' if cloud['reachable'] else 'UNREACHABLE'} since {cloud['since']}")
    for s in report["servers"]:
        print(f"  {s['server']:<40} {'healthy' if s['healthy'] else 'unhealthy'} since {s['since']}")
    for kind, cert in (report.get("certificates") or {}).items():
        line = f"{kind} certificate ({cert['source']}): {cert['subject'] or 'none yet'}"
        if cert["notAfter"]:
            line += f", {'EXPIRED' if cert['expired'] else 'valid'} until {cert['notAfter']}"
        if cert["renewAfter"]:
            line += f", renews after {cert['renewAfter']}"
        print(line + f", {cert['rotations']} rotations")
        if cert["pendingCSR"]:
            print(f"  waiting for CSR {cert['pendingCSR']} (kubectl certificate approve {cert['pendingCSR']})")
        if cert["problem"]:
            print(f"  last problem: {cert['problem']}")
    cache = report["cache"]
    print(f"cache {cache['path']} ({'writable' if cache['writable'] else 'NOT WRITABLE'}):")
    counts = cache.get("counts")
    if counts:
        print(
            f"  {counts['objects']} objects, {counts['views']} list views (at most {cache['maxViewsPerScope']} "
            f"per scope), {counts['components']} components of which {counts['token_scopes']} token scopes "
            f"(removed after {cache['tokenScopeIdleSeconds']:g}s unused), {counts['tombstones']} tombstones"
        )
    for e in cache["entries"]:
        print(
            f"  {e['component']:<20} {e['gvr']:<45} {e['encoding']:<9} {e['objects']:>6} objects {e['bytes']:>10} bytes"
        )
    limits = report.get("limits")
    if limits:
        held, caps = limits["memoryHeld"], limits["memoryCaps"]
        print(
            f"limits: memory held {held['requests']}/{caps['requests']} bytes (requests), "
            f"{held['lists']}/{caps['lists']} bytes (lists for the cache); "
            f"list digests {limits['listDigests']}/{limits['listDigestsCap']}"
        )
        inflight = limits.get("inflight")
        if inflight:
            print(
                "in flight (non-watch): "
                + ", ".join(
                    f"{cls} {n}/{inflight['caps'].get(cls) or 'unlimited'}" for cls, n in inflight["now"].items()
                )
                + (
                    f"; busiest door client {inflight['busiestClient']}/{inflight['perClientCap']}"
                    if "perClientCap" in inflight
                    else ""
                )
            )
            if "servingNonNodeCap" in inflight:
                waiting = inflight["waiting"]
                print(
                    f"pod and other requests served at once: {inflight['servingNonNode']}/"
                    f"{inflight['servingNonNodeCap'] or 'unlimited'}, waiting their turn: pod {waiting['pod']}, "
                    f"other {waiting['other']} (up to {inflight['queueWaitSeconds']:g}s each)"
                )
    box = report["outbox"]
    print(f"outbox: {box['depth']}/{box['capacity']} waiting, {box['dropped']} dropped")
    for w in box["oldest"]:
        print(f"  {w['method']} {w['path']} from {w['component']} ({w['bytes']} bytes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["status"]:
        return status_main(args_list[1:])
    if args_list[:1] == [certificate.HELPER]:  # the child that makes keys (`certificate.helper_command`)
        return certificate.helper_main()
    try:
        args = parse_args(args_list)
        settings = settings_from_args(args)
    except config.ConfigError as exc:
        print(f"yurthub: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if token_on_command_line(args_list):
        log.warning(
            "the bootstrap token was given with --join-token: every user of this machine can read it in the "
            "process list (/proc/<pid>/cmdline); put it in an owner-only file and use --join-token-file"
        )
    return server.run(settings)
