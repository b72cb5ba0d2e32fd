"""`yurtctl convert --tunnel` on the test cluster, set up the way an operator with a tunnel server beside the
control plane does it: the server's certificate in a Secret the chart is told to use (so kube-apiserver's
egress selector could be configured with that CA before convert ran), the server on the host from its
console script, and yurtctl's flags pointing the edge nodes' agents at it. The cloud nodes of the test
cluster are kwok nodes, which run nothing, so the chart's server Deployment and yurt-manager's are installed
with 0 replicas and both run on the host instead, beside the rest of the control plane."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from converter import helm
from testenv import cluster, pki, tunnelhost

TLS_SECRET_NAME = "yurt-tunnel-server-operator-tls"  # noqa: S105 - the name of a Secret, not a password
"""The Secret (kube-system) with the server certificate the operator made."""


def issue_certs(ca: pki.CertificateAuthority, directory: Path) -> tunnelhost.Certs:
    """The tunnel's certificates, naming what agents verify (`helm.SERVER_NAME`) and the host's addresses."""
    node = cluster.Settings().node
    return tunnelhost.issue(ca, directory, addresses=("127.0.0.1", node.cloud_address), dns_names=(helm.SERVER_NAME,))


def prepare(kube: cluster.Cluster, certs: tunnelhost.Certs, directory: Path) -> Path:
    """The Secret with the server's certificate, and the chart values that use it; returns the values file."""
    kube.kubectl.run(
        "create", "secret", "tls", TLS_SECRET_NAME, "-n", helm.NAMESPACE,
        f"--cert={certs.server_cert}", f"--key={certs.server_key}",
    )  # fmt: skip
    path = directory / "tunnel-values.yaml"
    path.write_text(json.dumps({"tls": {"existingSecret": TLS_SECRET_NAME, "caBundle": certs.ca.read_text()}}))
    return path


def common_args(image: str) -> list[str]:
    """Flags convert and revert share on the test cluster."""
    return [f"--image={image}", "--node-timeout=400", f"--helm={cluster.binaries() / 'helm'}"]


def convert_args(
    kube: cluster.Cluster, server: tunnelhost.Server, values: Path, image: str, cloud_nodes: list[str], hub_args: str
) -> list[str]:
    return [
        "convert",
        "--cloud-nodes=" + ",".join(cloud_nodes),
        f"--hub-args={hub_args}",
        "--manager-replicas=0",
        "--tunnel",
        f"--tunnel-server-addr={kube.settings.node.cloud_address}:{server.agent_port}",
        "--tunnel-server-replicas=0",
        f"--tunnel-values={values}",
        *common_args(image),
    ]


def yurtctl(kube: cluster.Cluster, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    """The yurtctl console script next to this Python, with the admin kubeconfig."""
    if kube.plane is None:
        raise RuntimeError("no control plane")
    binary = shutil.which("yurtctl", path=os.path.dirname(sys.executable))
    if binary is None:
        raise RuntimeError("the yurtctl console script is not installed next to this Python")
    return subprocess.run(
        [binary, f"--kubeconfig={kube.plane.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
