"""OpenYurt's yurthub v1.7.0 (the anchor of bench/yurthub_bench.py) started on the host against the test cluster.

What v1.7.0 needs, or it answers 503 ("resources needed by filters are not synced"):
- `--nodepool-name`, the NodePool CRD (ours, shaped like OpenYurt's apps.openyurt.io: converter/crds) and a
  NodePool of that name;
- its `yurt-hub` ClusterRole bound to the group `system:nodes`, and the ConfigMap `kube-system/yurt-hub-cfg`
  (both as its v1.7.0 Helm chart has them, charts/yurthub/templates/yurthub-cfg.yaml);
- in `--bootstrap-mode=kubeletcertificate`, kubelet's files at fixed paths: `/etc/kubernetes/kubelet.conf`,
  `/var/lib/kubelet/pki/kubelet-client-current.pem` and `/etc/kubernetes/pki/ca.crt`. The hub runs in a mount
  namespace of its own (`unshare -m`) where `/etc` and `/var/lib` are overlays whose writable layer is a tmpfs
  of that namespace: the files are placed there and nothing on the host changes;
- its serving-certificate CSR approved (`approve_csrs`, until the hub is ready);
- `--node-ip` (its multiplexer listens there): 127.0.0.1; the dummy interface it would add to the host's network
  is switched off (`--enable-dummy-if=false`).

`filters=False` starts it with `--enable-resource-filter=false`: its default `serviceenvupdater` filter decodes
and re-encodes kubelet's pod lists, about half its online LIST time, so the benchmark measures it both ways.

Its proxy port serves plain HTTP on 127.0.0.1 to kubelet-shaped clients, like ours.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from testenv import cluster, controlplane

VERSION = "v1.7.0"
POOL = "bench-pool"
ROOT = Path(__file__).resolve().parent.parent
NODEPOOL_CRD = ROOT / "converter" / "crds" / "nodepools.apps.openyurt.io.yaml"

_RULES: list[tuple[str, str, list[str], list[str]]] = [  # group, resource, verbs, resourceNames
    ("", "events", ["get"], []),
    ("apps.openyurt.io", "nodepools", ["list", "watch"], []),
    ("", "configmaps", ["get", "list", "watch"], []),
    ("", "secrets", ["list", "watch"], ["yurt-coordinator-yurthub-certs"]),
    ("coordination.k8s.io", "leases", ["get", "update"], []),
    ("discovery.k8s.io", "endpointslices", ["list", "watch"], []),
    ("", "endpoints", ["list", "watch"], []),
]


def cluster_objects() -> list[dict[str, Any]]:
    """The RBAC, ConfigMap and NodePool yurthub v1.7.0 waits for (its chart's, for a node in `POOL`)."""
    rules = [
        {"apiGroups": [g], "resources": [r], "verbs": v, **({"resourceNames": n} if n else {})} for g, r, v, n in _RULES
    ]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "yurt-hub"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "yurt-hub"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "yurt-hub"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "yurt-hub-cfg",
                "namespace": "kube-system",
                "labels": {"openyurt.io/configmap-name": "yurt-hub-cfg"},
            },
            "data": {"cache_agents": "", "servicetopology": "", "discardcloudservice": "", "masterservice": ""},
        },
        {
            "apiVersion": "apps.openyurt.io/v1beta2",
            "kind": "NodePool",
            "metadata": {"name": POOL},
            "spec": {"type": "Edge"},
        },
    ]


def prepare(kube: cluster.Cluster) -> None:
    """Install what yurthub v1.7.0 needs in the cluster (once per cluster)."""
    kube.kubectl.run("apply", "-f", str(NODEPOOL_CRD))
    kube.kubectl.run(
        "wait", "--for=condition=Established", "crd/nodepools.apps.openyurt.io", "--timeout=60s", timeout=70
    )
    kube.kubectl.apply(cluster_objects())


# Runs as root in a new mount namespace: /etc and /var/lib become overlays whose upper layer is a tmpfs of this
# namespace, kubelet's three files are placed at the paths yurthub reads, then yurthub replaces the shell.
_NAMESPACE_SCRIPT = r"""
set -eu
d=$1; shift
mount -t tmpfs tmpfs "$d/ns"
for top in /etc /var/lib; do
    layer="$d/ns$(echo "$top" | tr / _)"
    mkdir -p "$layer/upper" "$layer/work"
    mount -t overlay overlay -o "lowerdir=$top,upperdir=$layer/upper,workdir=$layer/work" "$top"
done
mkdir -p /etc/kubernetes/pki /var/lib/kubelet/pki
cp "$d/ca.crt" /etc/kubernetes/pki/ca.crt
cp "$d/kubelet.conf" /etc/kubernetes/kubelet.conf
cp "$d/kubelet-client-current.pem" /var/lib/kubelet/pki/kubelet-client-current.pem
exec "$@"
"""


@dataclasses.dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    proxy_port: int
    serve_port: int
    log: Path
    cache: Path

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"OpenYurt's yurthub exited: {self.log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.serve_port}/v1/readyz", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def anchor_bin() -> Path:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-anchors.sh"), "openyurt"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def start(kube: cluster.Cluster, node: str, directory: Path, *, filters: bool = True, timeout: float = 120) -> Hub:
    """OpenYurt's yurthub for `node` (kubelet's identity: a node client certificate from the cluster CA) in its
    own mount namespace; returns once it is ready, its serving CSR approved."""
    plane = kube.plane
    assert plane is not None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ns").mkdir(exist_ok=True)
    pair = plane.ca.issue(f"system:node:{node}", organizations=("system:nodes",), client=True)
    pem = directory / "kubelet-client-current.pem"
    pem.write_bytes(pair.cert_pem + pair.key_pem)
    pem.chmod(0o600)
    (directory / "ca.crt").write_bytes(plane.ca.pair.cert_pem)
    kubelet_pem = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    (directory / "kubelet.conf").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": plane.server, "certificate-authority": "/etc/kubernetes/pki/ca.crt"},
                    }
                ],
                "users": [{"name": "u", "user": {"client-certificate": kubelet_pem, "client-key": kubelet_pem}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    proxy_port, serve_port, secure_port, mux_port = (controlplane.free_port() for _ in range(4))
    argv = [
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        _NAMESPACE_SCRIPT,
        "openyurt-hub",
        str(directory),
        str(anchor_bin() / "yurthub"),
        f"--node-name={node}",
        f"--nodepool-name={POOL}",
        f"--server-addr={plane.server}",
        "--bootstrap-mode=kubeletcertificate",
        "--working-mode=edge",
        "--bind-address=127.0.0.1",
        "--bind-proxy-address=127.0.0.1",
        f"--proxy-port={proxy_port}",
        f"--proxy-secure-port={secure_port}",
        f"--serve-port={serve_port}",
        f"--multiplexer-port={mux_port}",
        "--node-ip=127.0.0.1",
        "--enable-dummy-if=false",
        "--enable-iptables=false",
        f"--root-dir={directory / 'root'}",
        f"--disk-cache-path={directory / 'cache'}",
        f"--enable-resource-filter={'true' if filters else 'false'}",
    ]
    log = directory / "yurthub.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    hub = Hub(proc, proxy_port, serve_port, log, directory / "cache")
    deadline = time.monotonic() + timeout
    try:
        while not hub.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"OpenYurt's yurthub not ready in {timeout:g}s: {log.read_text()[-3000:]}")
            approve_csrs(kube, node)
            time.sleep(0.5)
    except BaseException:
        hub.stop()
        raise
    return hub


def approve_csrs(kube: cluster.Cluster, node: str) -> None:
    """Approve the pending CSRs `node` asked for (yurthub's serving certificate)."""
    for csr in kube.kubectl.get("csr")["items"]:
        pending = not csr.get("status", {}).get("conditions")
        if pending and csr["spec"].get("username") == f"system:node:{node}":
            kube.kubectl.run("certificate", "approve", csr["metadata"]["name"])
