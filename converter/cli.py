"""The `yurtctl` and `yurt-manager` commands."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import socket
import sys
import urllib.error
import urllib.request

import prometheus_client as prom

from converter import (
    appset,
    controller,
    endpointwebhook,
    errors,
    helm,
    host,
    joincli,
    jointoken,
    kube,
    nodeconversion,
    nodestep,
    plan,
    runner,
    serve,
    sites,
)

log = logging.getLogger(__name__)


def build_yurtctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurtctl", description="Turn a running Kubernetes cluster into an edge cluster, and back."
    )
    parser.add_argument("--kubeconfig", default="", help="defaults to $KUBECONFIG, then ~/.kube/config")
    parser.add_argument("--v", type=int, default=0, help="log verbosity: 0 warnings, 1 info, 2 debug")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a stock cluster into an edge cluster")
    convert.add_argument("--cloud-nodes", required=True, help="comma-separated nodes that stay in the cloud")
    convert.add_argument("--edge-nodes", default="", help="nodes to convert (default: all others)")
    convert.add_argument(
        "--autonomous-nodes", default="", help="edge nodes whose pods are never evicted (default: all)"
    )
    convert.add_argument(
        "--manager-replicas", type=int, default=2, help="yurt-manager replicas (0: you run it elsewhere)"
    )
    convert.add_argument(
        "--manager-webhook-url",
        default="",
        metavar="URL",
        help="https://host:port where the apiserver reaches a yurt-manager run outside the cluster (with "
        "--manager-replicas=0), for its endpoint webhook (default: the yurt-manager-webhook Service)",
    )
    convert.add_argument(
        "--join-token-file",
        default="",
        metavar="FILE",
        help="owner-only file with a bootstrap token: each edge node's yurthub gets its own client certificate "
        "with it. It reaches the nodes through a Secret mounted into their Jobs, never a command line",
    )
    tunnel = convert.add_argument_group(
        "tunnel", "the reverse tunnel, so the cloud reaches edge nodes behind NAT (kubectl logs/exec)"
    )
    tunnel.add_argument(
        "--tunnel",
        action="store_true",
        help=f"install the tunnel server chart ({helm.RELEASE} in {helm.NAMESPACE}) and an agent on each edge node",
    )
    tunnel.add_argument(
        "--tunnel-server-addr",
        default="",
        metavar="HOST:PORT[,...]",
        help="where edge nodes reach the tunnel server (a cloud node's address with the agent NodePort, a load "
        "balancer, or the hosts beside kube-apiserver); required with --tunnel",
    )
    tunnel.add_argument(
        "--tunnel-server-name",
        default=helm.SERVER_NAME,
        help="name the server's certificate carries, which agents verify (default: the chart's)",
    )
    tunnel.add_argument(
        "--tunnel-server-replicas",
        type=int,
        default=2,
        help="server replicas on the cloud nodes (0: it runs outside the cluster, beside kube-apiserver)",
    )
    tunnel.add_argument(
        "--tunnel-values",
        action="append",
        default=[],
        metavar="FILE",
        help="more values for the chart (certificates, Services), after convert's own; repeatable",
    )
    revert = sub.add_parser("revert", help="undo convert, node by node")
    for p in (convert, revert):
        p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
        p.add_argument(
            "--image",
            default=plan.Options.image,
            help="image of the per-node Jobs and of yurt-manager (default: %(default)s)",
        )
        p.add_argument(
            "--node-timeout",
            type=float,
            default=600.0,
            metavar="SECONDS",
            help="per node Job: yurt-manager stops one running longer and counts it failed (default: %(default)g)",
        )
        p.add_argument(
            "--parallel",
            type=int,
            default=5,
            help="node Jobs yurt-manager runs at once (its --max-parallel-conversions caps it; default: %(default)s)",
        )
        p.add_argument("--hub-args", default="", help="extra yurthub flags for the nodes' yurthub.env")
        p.add_argument("--helm", default="helm", help="the helm binary (for the tunnel chart)")
        p.add_argument(
            "--tunnel-chart",
            default="",
            metavar="PATH",
            help="the tunnel chart (default: the one shipped with yurtctl)",
        )
    _add_get_parser(sub)
    joincli.add_join_parser(sub)
    node = sub.add_parser("node", help="the node-side steps, run on the node itself (the Jobs run these)")
    node_sub = node.add_subparsers(dest="node_command", required=True)
    for action in ("convert", "revert"):
        n = node_sub.add_parser(action, help=f"{action} this node")
        n.add_argument("--node-name", required=True)
        n.add_argument("--root", default="/", help="the node's root file system")
        n.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="per wait")
        n.add_argument("--hub-args", default="", help="extra yurthub flags for yurthub.env")
    node_convert = node_sub.choices["convert"]
    node_convert.add_argument(
        "--join-token-file",
        default="",
        metavar="FILE",
        help="file on this node with a bootstrap token, installed as yurthub's --join-token-file",
    )
    node_convert.add_argument(
        "--tunnel-server-addr", default="", metavar="HOST:PORT[,...]", help="also install the tunnel agent"
    )
    node_convert.add_argument("--tunnel-server-name", default="", help="name the server's certificate carries")
    node_convert.add_argument(
        "--tunnel-ca-file", default=nodestep.TUNNEL_CA, help="the tunnel server's CA on this node"
    )
    joincli.add_node_parsers(node_sub)
    return parser


def _add_get_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get = sub.add_parser("get", help="show the edge by site: pools, their nodes and their YurtAppSets")
    get.add_argument(
        "what",
        choices=("pools", "yurtappsets", "nodes"),
        help="pools: one row per NodePool; yurtappsets; nodes: each node's edge label, pool and conversion",
    )
    get.add_argument("-n", "--namespace", default="", help="YurtAppSets of this namespace only (default: all)")


def _get_main(args: argparse.Namespace) -> int:
    """`yurtctl get`: read nodes, NodePools and YurtAppSets, print a table (a missing CRD: none of them)."""
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG", "") or _default_kubeconfig()
    try:
        api = kube.KubeApi(kubeconfig)
    except errors.ConverterError as exc:
        print(f"yurtctl: {exc}", file=sys.stderr)
        return 1

    def listed(path: str) -> list[dict[str, object]]:
        try:
            return api.list(path)
        except errors.NotFound:
            return []

    try:
        yas_path = appset.YURTAPPSETS
        if args.namespace:
            yas_path = yas_path.replace("/yurtappsets", f"/namespaces/{args.namespace}/yurtappsets")
        yases = listed(yas_path)
        if args.what == "nodes":
            types = nodeconversion.pool_types(listed(appset.NODEPOOLS))
            headers = ["NAME", "EDGE-WORKER", "POOL", "EDGE", "CONVERSION", "MESSAGE"]
            sys.stdout.write(sites.table(headers, nodeconversion.node_rows(listed("/api/v1/nodes"), types)))
        elif args.what == "yurtappsets":
            sys.stdout.write(sites.render_appsets(yases))
        else:
            rows = sites.pool_rows(listed("/api/v1/nodes"), listed(appset.NODEPOOLS), yases)
            sys.stdout.write(sites.render_pools(rows))
    except errors.ConverterError as exc:
        print(f"yurtctl get {args.what}: {exc}", file=sys.stderr)
        return 1
    finally:
        api.close()
    return 0


def _nodes(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - fixed loopback URLs of nodestep
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError):
        return 0, ""


def _node_main(args: argparse.Namespace) -> int:
    settings = nodestep.Settings(
        node=args.node_name,
        hub_args=args.hub_args,
        timeout_s=args.timeout,
        tunnel_servers=_nodes(getattr(args, "tunnel_server_addr", "")),
        tunnel_server_name=getattr(args, "tunnel_server_name", ""),
        tunnel_ca_file=getattr(args, "tunnel_ca_file", nodestep.TUNNEL_CA),
        join_token_file=getattr(args, "join_token_file", ""),
    )
    step = nodestep.convert if args.node_command == "convert" else nodestep.revert
    try:
        step(host.LocalHost(args.root), _fetch, settings)
    except errors.ConverterError as exc:
        print(f"yurtctl node {args.node_command}: {exc}", file=sys.stderr)
        return 1
    print(f"yurtctl node {args.node_command}: node {args.node_name} done")
    return 0


def build_manager_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurt-manager",
        description="Cloud-side controller: keeps pods of autonomous edge nodes from eviction and approves "
        "the certificate requests of yurt-edge components.",
    )
    parser.add_argument("--kubeconfig", default="", help="in-cluster config when empty")
    election = parser.add_argument_group("leader election")
    election.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    election.add_argument("--leader-elect-namespace", default="kube-system", help="namespace of the Lease")
    election.add_argument("--leader-elect-lease-name", default="yurt-manager")
    election.add_argument(
        "--leader-elect-lease-duration",
        type=int,
        default=15,
        metavar="SECONDS",
        help="renewed every third of it; a replica stops acting two thirds after its last renewal",
    )
    election.add_argument("--identity", default="", help="this replica's name in the Lease (default: host-random)")
    serving = parser.add_argument_group("health and metrics")
    serving.add_argument(
        "--health-bind-address",
        default="0.0.0.0",  # noqa: S104 - kubelet probes reach the pod IP
        help="address of /healthz, /readyz, /metrics",
    )
    serving.add_argument("--health-port", type=int, default=10272)
    loop = parser.add_argument_group("control loop")
    loop.add_argument(
        "--resync-seconds",
        type=float,
        default=2.0,
        help="longest time between passes (changes start one at once); the Lease is renewed on its own clock",
    )
    loop.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep nodes, pods and CSRs by list then watch (--no-watch: list them on every pass)",
    )
    loop.add_argument(
        "--max-parallel-conversions",
        type=int,
        default=5,
        metavar="N",
        help="node Jobs of conversion by label running at once, at most (yurtctl convert --parallel may lower "
        "it; default: %(default)s)",
    )
    loop.add_argument("--cluster-domain", default="cluster.local", help="for the kubernetes Service's DNS name")
    loop.add_argument("--v", type=int, default=1, help="log verbosity: 0 warnings, 1 info, 2 debug")
    hook = parser.add_argument_group("endpoint webhook (pods of autonomous nodes stay in their Services)")
    hook.add_argument(
        "--webhook-port",
        type=int,
        default=0,
        help="HTTPS port of the endpoint webhook (0: not served; in-cluster 10273)",
    )
    hook.add_argument(
        "--webhook-bind-address",
        default="0.0.0.0",  # noqa: S104 - the apiserver reaches the pod IP through the Service
        help="address the webhook listens on",
    )
    hook.add_argument(
        "--webhook-names",
        default="yurt-manager-webhook.kube-system.svc",
        help="comma-separated names and addresses the apiserver reaches the webhook by, put in its serving "
        "certificate (default: %(default)s)",
    )
    hook.add_argument(
        "--webhook-secret",
        default="kube-system/yurt-manager-webhook-certs",
        help="namespace/name of the Secret holding the webhook's CA and certificate (made by yurtctl convert)",
    )
    certs = parser.add_argument_group("certificate approval")
    certs.add_argument(
        "--hub-door-addresses",
        default="169.254.2.1",
        help="comma-separated addresses where pods reach yurthub's HTTPS door, approved in its serving "
        "certificate (default: %(default)s)",
    )
    certs.add_argument(
        "--approve-apiserver-names",
        action="store_true",
        help="also approve loopback, localhost and the kubernetes Service's names and ClusterIPs in a yurthub "
        "serving certificate: such a certificate can impersonate the apiserver to pods (off by default)",
    )
    certs.add_argument(
        "--allowed-tenant-groups",
        default="",
        help="comma-separated openyurt:tenant:* groups a yurthub client certificate may carry (default: none)",
    )
    certs.add_argument(
        "--reserved-names",
        default="",
        help="comma-separated names and addresses never approved for a node, besides those the apiserver's "
        "serving certificate carries (read from its TLS handshake)",
    )
    return parser


def yurtctl_main(argv: list[str] | None = None) -> int:
    args = build_yurtctl_parser().parse_args(argv)
    _logging(args.v if args.command != "node" else max(args.v, 1))
    if args.command == "node" and args.node_command in ("join", "reset"):
        return joincli.node_main(args, _fetch)
    if args.command == "join":
        return joincli.join_main(args, args.kubeconfig or os.environ.get("KUBECONFIG", "") or _default_kubeconfig())
    if args.command == "node":
        return _node_main(args)
    if args.command == "get":
        return _get_main(args)
    tunnel_servers = _nodes(getattr(args, "tunnel_server_addr", ""))
    if getattr(args, "tunnel", False) and not tunnel_servers:
        print(
            "yurtctl convert: --tunnel needs --tunnel-server-addr (where edge nodes reach the server)", file=sys.stderr
        )
        return 2
    if tunnel_servers and not getattr(args, "tunnel", False):
        print("yurtctl convert: --tunnel-server-addr is only used with --tunnel", file=sys.stderr)
        return 2
    try:
        token = jointoken.read(args.join_token_file) if getattr(args, "join_token_file", "") else ""
    except errors.PreflightFailed as exc:
        print(f"yurtctl convert: {exc}", file=sys.stderr)
        return 2
    opts = plan.Options(
        join_token=token,
        cloud_nodes=_nodes(getattr(args, "cloud_nodes", "")),
        edge_nodes=_nodes(getattr(args, "edge_nodes", "")),
        autonomous_nodes=_nodes(getattr(args, "autonomous_nodes", "")),
        image=args.image,
        hub_args=args.hub_args,
        node_timeout_s=args.node_timeout,
        manager_replicas=getattr(args, "manager_replicas", 2),
        manager_webhook_url=getattr(args, "manager_webhook_url", ""),
        tunnel_servers=tunnel_servers,
        tunnel_server_name=getattr(args, "tunnel_server_name", helm.SERVER_NAME),
        tunnel_replicas=getattr(args, "tunnel_server_replicas", 2),
        parallel=args.parallel,
    )
    settings = runner.RunSettings(identity=f"{socket.gethostname()}_{secrets.token_hex(4)}")
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG", "") or _default_kubeconfig()
    try:
        api = kube.KubeApi(kubeconfig)
        charts = helm.Helm(
            args.helm, args.tunnel_chart or helm.bundled_chart(), kubeconfig, tuple(getattr(args, "tunnel_values", ()))
        )
    except errors.ConverterError as exc:
        print(f"yurtctl: {exc}", file=sys.stderr)
        return 1
    run = runner.convert if args.command == "convert" else runner.revert
    try:
        return run(api, opts, settings, sys.stdout, dry_run=args.dry_run, charts=charts)
    except errors.ConverterError as exc:
        print(f"yurtctl {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"yurtctl {args.command}: interrupted; run it again to finish", file=sys.stderr)
        return 130
    finally:
        api.close()


def _default_kubeconfig() -> str:
    return os.path.expanduser("~/.kube/config")


def manager_main(argv: list[str] | None = None) -> int:
    args = build_manager_parser().parse_args(argv)
    _logging(args.v)
    bad_tenants = [g for g in _nodes(args.allowed_tenant_groups) if not g.startswith("openyurt:tenant:")]
    if bad_tenants:
        print(
            f"yurt-manager: --allowed-tenant-groups takes openyurt:tenant:* groups only, not {bad_tenants}",
            file=sys.stderr,
        )
        return 2
    try:
        api = kube.KubeApi(args.kubeconfig, user_agent="yurt-manager")
    except errors.ConverterError as exc:
        print(f"yurt-manager: {exc}", file=sys.stderr)
        return 1
    settings = controller.Settings(
        identity=args.identity or f"{socket.gethostname()}_{secrets.token_hex(4)}",
        leader_elect=args.leader_elect,
        namespace=args.leader_elect_namespace,
        lease_name=args.leader_elect_lease_name,
        lease_duration_s=args.leader_elect_lease_duration,
        resync_s=args.resync_seconds,
        cluster_domain=args.cluster_domain,
        watch=args.watch,
        door_addresses=_nodes(args.hub_door_addresses),
        approve_apiserver_names=args.approve_apiserver_names,
        tenant_groups=_nodes(args.allowed_tenant_groups),
        reserved_names=_nodes(args.reserved_names),
        max_parallel_conversions=args.max_parallel_conversions,
    )
    registry = prom.CollectorRegistry()
    metrics = controller.Metrics(registry)
    webhook: endpointwebhook.Webhook | None = None
    if args.webhook_port:
        namespace, _, secret = args.webhook_secret.rpartition("/")
        webhook = endpointwebhook.Webhook(
            api,
            endpointwebhook.Settings(
                host=args.webhook_bind_address,
                port=args.webhook_port,
                names=_nodes(args.webhook_names),
                namespace=namespace or "kube-system",
                secret=secret,
            ),
            lambda r, n: metrics.admitted.labels(r, "kept" if n else "unchanged").inc(),
        )
    manager = controller.Manager(
        api,
        settings,
        metrics,
        served_names=lambda: controller.apiserver_names(api.server, api.ca_file),
        webhook=webhook,
    )
    try:
        server = serve.start(
            args.health_bind_address,
            args.health_port,
            registry,
            alive=serve.stalled_after(max(60.0, settings.resync_s * 10), lambda: manager.last_pass),
            ready=lambda: manager.synced,
        )
    except OSError as exc:
        print(f"yurt-manager: cannot listen on {args.health_bind_address}:{args.health_port}: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: manager.stopping.set())
    log.info(
        "yurt-manager started identity=%s server=%s health=%s:%d",
        settings.identity,
        api.server,
        args.health_bind_address,
        server.server_address[1],
    )
    manager.run()
    server.shutdown()
    api.close()
    log.info("yurt-manager stopped")
    return 0


def _logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["manager"]:
        return manager_main(args[1:])
    return yurtctl_main(args)
