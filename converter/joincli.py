"""The command lines of `yurtctl join` (cloud side), `yurtctl node join` and `yurtctl node reset` (on the
machine): flags, the token's way in (a file or standard input, never an argument), and the printed result.
The work is in `converter.join` and `converter.nodejoin`."""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys

from converter import errors, host, join, jointoken, kube, nodejoin


def _duration(text: str) -> datetime.timedelta:
    """`90s`, `30m`, `1h`, `2h30m`: kubeadm's --ttl style."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for ch in text.strip():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 30m, 1h or 2h30m")
    if number or total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive duration such as 30m, 1h or 2h30m")
    return datetime.timedelta(seconds=total)


def add_join_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "join",
        help="make a short-lived bootstrap token and print the command that joins a new machine",
    )
    p.add_argument("--nodepool", default="", help="NodePool (of type Edge) the machine joins")
    p.add_argument("--node-name", default="", help="name the machine registers as (default: its hostname)")
    p.add_argument("--ttl", type=_duration, default=datetime.timedelta(hours=1), help="token lifetime (default: 1h)")
    p.add_argument(
        "--server",
        default="",
        metavar="URL",
        help="https://host:port where the machine reaches the apiserver (default: the kubeconfig's)",
    )
    p.add_argument(
        "--token-out",
        default="",
        metavar="FILE",
        help="write the token to this new owner-only file instead of printing it; the command then reads "
        "the same path on the machine",
    )


def add_node_parsers(node_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    j = node_sub.add_parser("join", help="join this machine to the cluster behind yurthub (run as root)")
    j.add_argument("--server", required=True, metavar="URL", help="the apiserver, https://host:port")
    j.add_argument("--ca-cert-hash", required=True, help="sha256:<hex> of the cluster CA's public key")
    j.add_argument(
        "--token-file",
        required=True,
        metavar="FILE",
        help="owner-only file with the bootstrap token, or - to read it from standard input (asked for on a "
        "terminal); never on the command line",
    )
    j.add_argument("--nodepool", default="", help="NodePool to join (its label at registration)")
    j.add_argument("--node-name", default="", help="default: this machine's hostname")
    j.add_argument("--hub-args", default="", help="extra yurthub flags for yurthub.env")
    j.add_argument("--kubelet-args", default="", help="extra kubelet flags for kubeadm-flags.env")
    j.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="per wait (default: %(default)g)")
    j.add_argument("--root", default="/", help=argparse.SUPPRESS)
    r = node_sub.add_parser("reset", help="undo `yurtctl node join` on this machine")
    r.add_argument("--root", default="/", help=argparse.SUPPRESS)


def read_token(path: str) -> str:
    """The token from an owner-only file, or from standard input (`-`), asked for without echo on a terminal."""
    if path != "-":
        return jointoken.read(path).strip()
    source = "the token on standard input"
    on_terminal = sys.stdin.isatty()
    text = getpass.getpass("bootstrap token: ") if on_terminal else sys.stdin.read(jointoken.MAX_BYTES + 1)
    if len(text) > jointoken.MAX_BYTES:
        raise errors.PreflightFailed(f"{source}: longer than {jointoken.MAX_BYTES} bytes")
    return jointoken.parse(text, source)


def _write_private(path: str, text: str) -> None:
    """A new file, owner-only from creation (O_EXCL: an existing file, or a planted link, is refused)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise errors.PreflightFailed(f"--token-out {path}: cannot create a new file: {exc.strerror}") from exc
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def join_main(args: argparse.Namespace, kubeconfig: str) -> int:
    try:
        api = kube.KubeApi(kubeconfig)
    except errors.ConverterError as exc:
        sys.stderr.write(f"yurtctl: {exc}\n")
        return 1
    try:
        if not api.ca_file:
            raise errors.PreflightFailed("the kubeconfig names no cluster CA (certificate-authority)")
        with open(api.ca_file, "rb") as fh:
            admin_ca = fh.read()
        req = join.Request(
            server=args.server or api.server,
            nodepool=args.nodepool,
            node_name=args.node_name,
            ttl=args.ttl,
            token_file=os.path.abspath(args.token_out) if args.token_out else "",
        )
        token = join.new_token()
        if args.token_out:
            _write_private(args.token_out, token + "\n")
        try:
            issued = join.issue(api, req, admin_ca=admin_ca, now=datetime.datetime.now(datetime.UTC), token=token)
        except BaseException:
            if args.token_out:
                os.unlink(args.token_out)
            raise
        sys.stdout.write(join.render(issued, req, req.token_file))
    except OSError as exc:
        sys.stderr.write(f"yurtctl join: cannot read the cluster CA of the kubeconfig: {exc.strerror}\n")
        return 1
    except errors.ConverterError as exc:
        sys.stderr.write(f"yurtctl join: {exc}\n")
        return 1
    finally:
        api.close()
    return 0


def node_main(args: argparse.Namespace, fetch: nodejoin.Fetch) -> int:
    machine = host.LocalHost(args.root)
    if args.node_command == "reset":
        try:
            sys.stdout.write(f"yurtctl node reset: {nodejoin.reset(machine)}\n")
        except errors.ConverterError as exc:
            sys.stderr.write(f"yurtctl node reset: {exc}\n")
            return 1
        return 0
    try:
        token = read_token(args.token_file)
        settings = nodejoin.Settings(
            server=args.server,
            ca_hash=nodejoin.check_hash(args.ca_cert_hash),
            node=args.node_name or nodejoin.default_node_name(),
            nodepool=args.nodepool,
            hub_args=args.hub_args,
            kubelet_args=args.kubelet_args,
            timeout_s=args.timeout,
        )
        discovery = nodejoin.Discovery(settings.server, settings.ca_hash)
        nodejoin.run_join(machine, fetch, discovery, settings, token)
    except errors.ConverterError as exc:
        sys.stderr.write(f"yurtctl node join: {exc}\n")
        return 1
    pool = f" in NodePool {settings.nodepool}" if settings.nodepool else ""
    sys.stdout.write(f"yurtctl node join: node {settings.node} joined{pool}, Ready through yurthub\n")
    return 0
