"""yurt-manager started on the host from its console script, the way an operator runs it by hand: with a
kubeconfig of its own, bound only to the ClusterRole `yurtctl convert` installs for it.

Its endpoint webhook, when asked for (`webhook_port`), listens on 127.0.0.1: the kube-apiserver runs on the
same host, so the webhook configuration names it by URL (`webhook_url`, what `yurtctl convert
--manager-webhook-url` writes for a yurt-manager run beside the control plane), and its serving certificate
carries 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from converter import components
from testenv import controlplane, kubeconfig
from testenv.kubectl import wait_for

USER = "yurt-manager-host"


@dataclasses.dataclass
class HostManager:
    proc: subprocess.Popen[bytes]
    health: str
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.health}{path}", timeout=5) as resp:  # noqa: S310 - loopback URL
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def own_kubeconfig(plane: controlplane.ControlPlane, directory: Path) -> Path:
    """A client certificate for `USER`, with the rights of yurt-manager's ClusterRole and its Role in
    kube-system and nothing else (named `USER`, so that `yurtctl convert` and `revert` never touch them)."""
    plane.kubectl.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": USER},
                "rules": components.manager_rules(),
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": USER},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": USER},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": USER, "namespace": components.NAMESPACE},
                "rules": components.manager_namespace_rules(),
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": USER, "namespace": components.NAMESPACE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": USER},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
            },
        ]
    )
    pair = plane.ca.issue(USER, client=True)
    return kubeconfig.write(
        directory / "yurt-manager.kubeconfig",
        server=plane.server,
        ca_pem=plane.ca.pair.cert_pem,
        user=USER,
        cert_pem=pair.cert_pem,
        key_pem=pair.key_pem,
    )


def webhook_url(port: int) -> str:
    """Where the kube-apiserver on this host reaches a yurt-manager webhook started with `webhook_port=port`."""
    return f"https://127.0.0.1:{port}"


def start(config: Path, directory: Path, identity: str, *extra: str, webhook_port: int = 0) -> HostManager:
    binary = shutil.which("yurt-manager", path=os.path.dirname(sys.executable))
    if binary is None:
        raise RuntimeError("the yurt-manager console script is not installed next to this Python")
    directory.mkdir(parents=True, exist_ok=True)
    port = controlplane.free_port()
    log = directory / f"{identity}.log"
    argv = [
        binary,
        f"--kubeconfig={config}",
        f"--identity={identity}",
        "--health-bind-address=127.0.0.1",
        f"--health-port={port}",
        *(
            [f"--webhook-port={webhook_port}", "--webhook-bind-address=127.0.0.1", "--webhook-names=127.0.0.1"]
            if webhook_port
            else []
        ),
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    manager = HostManager(proc, f"http://127.0.0.1:{port}", log)
    wait_for(f"{identity} to answer /readyz", lambda: manager.get("/readyz")[0] == 200, timeout=30)
    return manager
