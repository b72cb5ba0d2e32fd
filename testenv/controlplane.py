"""The cloud: etcd, kube-apiserver, kube-controller-manager and kube-scheduler as host processes.

Configured like a kubeadm cluster where it matters to yurt-edge: TLS everywhere, `Node,RBAC` authorization,
NodeRestriction, bootstrap-token authentication with kubeadm's RBAC for joining and auto-approving node
client certificates, service-account tokens, and the controllers that sign CSRs, run Jobs, collect garbage
and watch node health (with short, configurable grace periods so tests stay fast).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import secrets
import socket
import ssl
import string
import urllib.request
from pathlib import Path
from typing import Any

from testenv import cgroups, kubeconfig, pki, process
from testenv.kubectl import Kubectl, wait_for

SERVICE_CIDR = "10.215.0.0/24"
CLUSTER_DNS = "10.215.0.10"
"""The `kube-system/kube-dns` Service's address: the tenth of the Service range, as kubeadm picks it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ControlPlaneSettings:
    advertise_address: str
    """The apiserver's address on the cloud side of the node's link; also in its serving certificate."""
    service_cidr: str = SERVICE_CIDR
    """ClusterIP range; its first address is the `kubernetes` Service."""
    node_monitor_grace_s: int = 12
    """How long the node lifecycle controller waits for a node's heartbeat before marking it NotReady."""
    not_ready_toleration_s: int = 300
    """Default tolerationSeconds for node.kubernetes.io/not-ready (DefaultTolerationSeconds admission)."""
    unreachable_toleration_s: int = 300
    """Default tolerationSeconds for node.kubernetes.io/unreachable."""
    egress_selector_config: str | None = None
    """An EgressSelectorConfiguration document for kube-apiserver (the tunnel needs one), or None."""
    extra_apiserver_args: tuple[str, ...] = ()
    """More kube-apiserver flags, appended last."""
    extra_controller_manager_args: tuple[str, ...] = ()
    """More kube-controller-manager flags, appended last (`--cluster-signing-duration=2m` for short-lived
    node certificates)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _service_ip(cidr: str) -> str:
    base, _ = cidr.split("/")
    octets = base.split(".")
    return ".".join([*octets[:3], str(int(octets[3]) + 1)])


def _random(n: int) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclasses.dataclass
class ControlPlane:
    """A running control plane. Build it with `start`; `stop` ends its processes."""

    settings: ControlPlaneSettings
    directory: Path
    ca: pki.CertificateAuthority
    server: str
    """URL the host reaches the apiserver at."""
    cloud_server: str
    """URL the node reaches the apiserver at."""
    admin_kubeconfig: Path
    kubectl: Kubectl
    bootstrap_token: str
    processes: list[process.Process]

    @classmethod
    def start(
        cls, settings: ControlPlaneSettings, *, bins: Path, directory: Path, group: cgroups.Group
    ) -> ControlPlane:
        pki_dir, logs = directory / "pki", directory / "logs"
        ca = pki.CertificateAuthority("yurt-edge-testenv-ca")
        ca_crt, ca_key = ca.pair.write(pki_dir, "ca")
        sa_pub, sa_key = pki.service_account_key().write(pki_dir, "sa")
        service_ip = _service_ip(settings.service_cidr)
        serving_crt, serving_key = ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=(
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ),
            ip_addresses=("127.0.0.1", settings.advertise_address, service_ip),
        ).write(pki_dir, "apiserver")
        kubelet_client_crt, kubelet_client_key = ca.issue(
            "kube-apiserver-kubelet-client", organizations=("system:masters",), client=True
        ).write(pki_dir, "apiserver-kubelet-client")

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        cloud_server = f"https://{settings.advertise_address}:{api_port}"

        def client_config(name: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
            pair = ca.issue(cn, organizations=orgs, client=True)
            return kubeconfig.write(
                directory / f"{name}.kubeconfig",
                server=server,
                ca_pem=ca.pair.cert_pem,
                user=cn,
                cert_pem=pair.cert_pem,
                key_pem=pair.key_pem,
            )

        admin = client_config("admin", "yurt-edge-admin", ("system:masters",))
        kcm = client_config("controller-manager", "system:kube-controller-manager")
        scheduler = client_config("scheduler", "system:kube-scheduler")

        procs: list[process.Process] = []

        def launch(name: str, argv: list[str]) -> process.Process:
            proc = process.Process(name, argv, group=group, log_dir=logs)
            procs.append(proc)
            return proc

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd = launch(
            "etcd",
            [
                str(bins / "etcd"),
                "--name=default",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_for("etcd health", lambda: _http_ok(f"{etcd_url}/health", etcd), timeout=30)

        apiserver_args = [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=0.0.0.0",
            f"--advertise-address={settings.advertise_address}",
            f"--secure-port={api_port}",
            f"--tls-cert-file={serving_crt}",
            f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={ca_crt}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            f"--service-cluster-ip-range={settings.service_cidr}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={kubelet_client_crt}",
            f"--kubelet-client-key={kubelet_client_key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--default-not-ready-toleration-seconds={settings.not_ready_toleration_s}",
            f"--default-unreachable-toleration-seconds={settings.unreachable_toleration_s}",
            "--profiling=false",
        ]
        if settings.egress_selector_config is not None:
            egress = directory / "egress-selector.yaml"
            egress.write_text(settings.egress_selector_config)
            apiserver_args.append(f"--egress-selector-config-file={egress}")
        apiserver_args += settings.extra_apiserver_args
        apiserver = launch("kube-apiserver", apiserver_args)
        admin_pair = pki.KeyPair(*_kubeconfig_pair(admin))
        admin_crt, admin_key = admin_pair.write(pki_dir, "admin")
        wait_for(
            "kube-apiserver readiness",
            lambda: _https_ok(f"{server}/readyz", apiserver, ca_crt, admin_crt, admin_key),
            timeout=90,
        )

        kubectl = Kubectl(bins / "kubectl", admin)
        token = f"{_random(6)}.{_random(16)}"
        kubectl.apply(_bootstrap_objects(token, cloud_server, ca.pair.cert_pem))
        # Pods need their namespace's `default` ServiceAccount, which the controller-manager makes only once
        # its controllers run (6 s here on 2 cores). Made now, pods can be created at once; the controller
        # leaves an existing one alone.
        kubectl.run("create", "serviceaccount", "default", "--namespace=default")

        launch(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kcm}",
                f"--authentication-kubeconfig={kcm}",
                f"--authorization-kubeconfig={kcm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--controllers=*,bootstrapsigner,tokencleaner",
                f"--cluster-signing-cert-file={ca_crt}",
                f"--cluster-signing-key-file={ca_key}",
                f"--root-ca-file={ca_crt}",
                f"--service-account-private-key-file={sa_key}",
                f"--service-cluster-ip-range={settings.service_cidr}",
                "--node-monitor-period=2s",
                f"--node-monitor-grace-period={settings.node_monitor_grace_s}s",
                "--profiling=false",
                *settings.extra_controller_manager_args,
            ],
        )
        launch(
            "kube-scheduler",
            [
                str(bins / "kube-scheduler"),
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        return cls(settings, directory, ca, server, cloud_server, admin, kubectl, token, procs)

    def check_running(self) -> None:
        for proc in self.processes:
            proc.check_running()

    def stop(self) -> None:
        # kube-apiserver drains open requests on SIGTERM; watches from a node that was just killed never
        # end by themselves, so do not wait the full default for them.
        for proc in reversed(self.processes):
            proc.stop(timeout=3)


def _kubeconfig_pair(path: Path) -> tuple[bytes, bytes]:
    user = json.loads(path.read_text())["users"][0]["user"]
    return base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"])


def _http_ok(url: str, proc: process.Process) -> bool:
    proc.check_running()
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - fixed http://127.0.0.1 URL
        return bool(resp.status == 200)


def _https_ok(url: str, proc: process.Process, ca: Path, cert: Path, key: Path) -> bool:
    proc.check_running()
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # noqa: S310 - fixed https URL
        return bool(resp.status == 200)


def _bootstrap_objects(token: str, server: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """What kubeadm puts in place so nodes can join with a bootstrap token, as API objects."""
    token_id, token_secret = token.split(".")
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)

    def binding(name: str, role: str, group: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        }

    cluster_info = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "",
                    "cluster": {
                        "server": server,
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "contexts": [],
            "users": [],
        }
    )
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
            "stringData": {
                "token-id": token_id,
                "token-secret": token_secret,
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": "system:bootstrappers:yurt-edge:default-node-token",
                "expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "description": "yurt-edge testenv node join token",
            },
        },
        binding("yurt-edge:kubelet-bootstrap", "system:node-bootstrapper", "system:bootstrappers"),
        binding(
            "yurt-edge:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:bootstrappers",
        ),
        binding(
            "yurt-edge:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            "system:nodes",
        ),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": {"kubeconfig": cluster_info},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "yurt-edge:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["cluster-info"],
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "yurt-edge:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "yurt-edge:bootstrap-signer-clusterinfo",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
        },
    ]
