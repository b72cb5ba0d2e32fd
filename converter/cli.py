"""The `yurtctl` and `yurt-manager` commands."""

from __future__ import annotations

import argparse
import sys


def build_yurtctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurtctl", description="Turn a running Kubernetes cluster into an edge cluster, and back."
    )
    parser.add_argument("--kubeconfig", default="", help="defaults to $KUBECONFIG, then ~/.kube/config")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert a stock cluster into an edge cluster")
    convert.add_argument("--cloud-nodes", required=True, help="comma-separated nodes that stay in the cloud")
    convert.add_argument("--edge-nodes", default="", help="nodes to convert (default: all others)")
    convert.add_argument("--autonomous-nodes", default="", help="edge nodes whose pods are never evicted")
    convert.add_argument("--tunnel", action="store_true", help="also install the tunnel server")
    convert.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    revert = sub.add_parser("revert", help="undo convert, node by node")
    revert.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    return parser


def build_manager_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yurt-manager",
        description="Cloud-side controller: keeps pods of autonomous edge nodes from eviction and approves "
        "the certificate requests of yurt-edge components.",
    )
    parser.add_argument("--kubeconfig", default="", help="in-cluster config when empty")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--health-port", type=int, default=10272)
    return parser


def _not_yet(prog: str) -> int:
    print(
        f"{prog}: this build does not carry the converter yet (it lands with the converter issue)",
        file=sys.stderr,
    )
    return 2


def yurtctl_main(argv: list[str] | None = None) -> int:
    build_yurtctl_parser().parse_args(argv)
    return _not_yet("yurtctl")


def manager_main(argv: list[str] | None = None) -> int:
    build_manager_parser().parse_args(argv)
    return _not_yet("yurt-manager")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["manager"]:
        return manager_main(args[1:])
    return yurtctl_main(args)
