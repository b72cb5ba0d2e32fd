"""Put yurthub on the real node the way an operator would: wheels, a virtualenv, the systemd unit from
`systemd/`, an environment file; then point kubelet's kubeconfig at it and restart kubelet.

The node has no route to a package index, so the wheels (yurt-edge and its dependencies) are built on the
host and handed to the node; `pip install --no-index` installs them into /opt/yurt-edge with the node's own
Debian Python 3.11.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from testenv import cluster
from testenv.kubectl import wait_for
from testenv.node import Node

UNIT = cluster.REPO / "systemd" / "yurthub.service"
KUBELET_CONF = cluster.REPO / "systemd" / "kubelet-yurthub.conf"
FLAGS_ENV = "/var/lib/kubelet/kubeadm-flags.env"


@functools.cache
def wheelhouse() -> Path:
    """yurt-edge's dependencies as wheels (cached by setup.cfg) plus a fresh wheel of yurt-edge itself, built
    once per process (a test run does not change the source under its own feet)."""
    key = hashlib.sha256((cluster.REPO / "setup.cfg").read_bytes()).hexdigest()[:12]
    deps = cluster.cache_dir() / "wheels" / key
    pip = [sys.executable, "-m", "pip", "-q", "wheel", "--wheel-dir"]
    if not (deps / ".complete").exists():
        shutil.rmtree(deps, ignore_errors=True)
        subprocess.run([*pip, str(deps), str(cluster.REPO)], check=True)
        for own in deps.glob("yurt_edge-*.whl"):
            own.unlink()
        (deps / ".complete").touch()
    own_dir = cluster.cache_dir() / "wheels" / "yurt-edge"
    shutil.rmtree(own_dir, ignore_errors=True)
    subprocess.run([*pip, str(own_dir), "--no-deps", str(cluster.REPO)], check=True)
    house = cluster.cache_dir() / "wheels" / "house"
    shutil.rmtree(house, ignore_errors=True)
    house.mkdir(parents=True)
    for wheel in [*deps.glob("*.whl"), *own_dir.glob("*.whl")]:
        shutil.copy2(wheel, house / wheel.name)
    return house


def install_package(node: Node, wheels: Path) -> None:
    """yurt-edge into the node's /opt/yurt-edge virtualenv, from the wheels (the node has no package index)."""
    target = node.directory / "state" / "var/lib/yurt-edge/wheels"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(wheels, target)
    node.run(["python3", "-m", "venv", "/opt/yurt-edge"], timeout=120)
    node.run(
        [
            "/opt/yurt-edge/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            "/var/lib/yurt-edge/wheels",
            "yurt-edge",
        ],
        timeout=300,
    )


KUBELET_IDENTITY = "--client-cert=/var/lib/kubelet/pki/kubelet-client-current.pem"
JOIN_TOKEN_FILE = "/etc/yurthub/join-token"  # noqa: S105 - a path, not a secret


def join_token_identity(node: Node, token: str) -> str:
    """Put a bootstrap token on `node` the way the converter does (`/etc/yurthub/join-token`, owner-only from
    its first byte) and return the identity flag that names it, for `install(identity_args=...)`: the token is
    never on yurthub's command line (readable by every user in /proc/<pid>/cmdline) nor in its unit's
    environment file."""
    write(node, JOIN_TOKEN_FILE, token + "\n", mode=0o600)
    return f"--join-token-file={JOIN_TOKEN_FILE}"


def install(
    node: Node, *, server: str, wheels: Path, extra_args: str = "", identity_args: str = KUBELET_IDENTITY
) -> None:
    """Install and start yurthub.service on `node`, talking to `server` with the identity `identity_args`
    name (the kubelet's client cert by default; `join_token_identity(...)` for yurthub's own by CSR)."""
    install_package(node, wheels)
    args = (
        f"--server-addr={server} --node-name={node.settings.name} --ca-file=/etc/kubernetes/pki/ca.crt "
        f"{identity_args} {extra_args}"
    )
    write(node, "/etc/yurthub/yurthub.env", f'YURTHUB_ARGS="{args.strip()}"\n', mode=0o600)
    write(node, "/etc/systemd/system/yurthub.service", UNIT.read_text())
    node.run(["systemctl", "daemon-reload"])
    node.run(["systemctl", "enable", "--now", "yurthub.service"], timeout=90)


def put_behind_yurthub(node: Node, *, server: str, extra_args: str = "") -> None:
    """The whole move: install and start yurthub on `node`, wait until it serves, route kubelet through it."""
    install(node, server=server, wheels=wheelhouse(), extra_args=extra_args)
    wait_until_serving(node)
    route_kubelet_through_yurthub(node)


def route_kubelet_through_yurthub(node: Node) -> None:
    """What the converter does on a kubeadm node: a kubeconfig for yurthub, kubelet pointed at it, restart."""
    write(node, "/etc/kubernetes/kubelet-yurthub.conf", KUBELET_CONF.read_text())
    flags = node.run(["cat", FLAGS_ENV]).stdout.strip()
    if "kubelet-yurthub.conf" not in flags:
        # Later flags win. An empty --bootstrap-kubeconfig stops kubelet from "repairing" a kubeconfig that
        # has no client certificate by bootstrapping again and rewriting it to point at the cloud.
        flags = flags.rstrip('"') + ' --kubeconfig=/etc/kubernetes/kubelet-yurthub.conf --bootstrap-kubeconfig="'
        write(node, FLAGS_ENV, flags + "\n")
    node.run(["systemctl", "restart", "kubelet"])


def write(node: Node, path: str, text: str, mode: int = 0o644) -> None:
    """Write `path` inside the node with `mode`: the bytes go to a new file created under umask 077 (owner-only
    from its first moment, whatever was there before), which takes `mode` and is then renamed over `path`."""
    script = (
        f'mkdir -p "$(dirname "{path}")" && umask 077 && rm -f "{path}.new" && cat > "{path}.new" '
        f'&& chmod {mode:o} "{path}.new" && mv -f "{path}.new" "{path}"'
    )
    node.run(["sh", "-c", script], stdin=text)


def yurthub_status(node: Node) -> dict[str, object]:
    out = node.run(["/opt/yurt-edge/bin/yurthub", "status", "--json"], check=False)
    if out.returncode != 0:
        raise RuntimeError(f"yurthub status failed: {out.stderr.strip()}")
    report: dict[str, object] = json.loads(out.stdout)
    return report


def wait_until_serving(node: Node) -> None:
    wait_for("yurthub on the node to serve", lambda: bool(yurthub_status(node)), timeout=60)


def kubelet_requests_forwarded(node: Node) -> float:
    """How many of kubelet's requests yurthub on `node` forwarded to the cloud (from its metrics; read with
    socat, which every test node has, since a node may have no python3). `shut-none`: socat must not half-close
    the connection when its input ends, or aiohttp drops the request unanswered."""
    request = "GET /metrics HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
    page = node.run(["sh", "-c", f"printf '{request}' | socat -t 10 - TCP:127.0.0.1:10267,shut-none"]).stdout
    if "yurthub_requests_total" not in page:
        raise RuntimeError(f"yurthub's metrics page on the node did not arrive: {page[:200]!r}")
    pattern = r'^yurthub_requests_total\{component="kubelet",[^}]*outcome="forwarded"[^}]*\} (\S+)'
    return sum(float(m) for m in re.findall(pattern, page, re.M))
