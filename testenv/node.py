"""The real edge node: a Debian root booted with systemd as PID 1 in its own namespaces.

Layout follows a kubeadm node, because that is what yurt-edge's converter meets in the field: kubelet as a
systemd unit with the `10-kubeadm.conf` drop-in, `/var/lib/kubelet/config.yaml`, `kubeadm-flags.env`,
`/etc/kubernetes/{bootstrap-kubelet.conf,kubelet.conf,pki/ca.crt}`. containerd, runc and the CNI plugins are
Debian's. The kubelet joins with a bootstrap token and gets its client certificate by CSR.

The node's only network is a veth pair to the host (the "cloud link"): `eth0` inside, `ye-cloud0` outside.
Cutting the link takes the host end down, so the node sees a dead cable and its packets go nowhere. The
"behind NAT" switch drops connections the cloud opens towards the node while the node's own outgoing
connections keep working.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from testenv import cgroups, images, process
from testenv.kubectl import wait_for

HOST_LINK = "ye-cloud0"
_NAT_CHAIN = "YURT-EDGE-NAT"
_INIT = Path(__file__).with_name("node-init.sh")
_KUBELET_YURTHUB_CONF = Path(__file__).resolve().parent.parent / "systemd" / "kubelet-yurthub.conf"


@dataclasses.dataclass(frozen=True, kw_only=True)
class NodeSettings:
    name: str = "edge-1"
    """Node name and hostname."""
    address: str = "10.213.0.2"
    """The node's address on the cloud link."""
    cloud_address: str = "10.213.0.1"
    """The host's address on the cloud link (where the apiserver is reached)."""
    prefix: int = 24
    pod_cidr: str = "10.214.0.0/24"
    """Pod addresses on this node (CNI bridge with host-local IPAM)."""
    lease_duration_s: int = 8
    """kubelet's node Lease duration; it renews every quarter of it."""
    reachable_from_cloud: bool = True
    """False: the cloud cannot open connections to the node (as behind NAT); the node can still dial out."""
    cluster_dns: str = ""
    """The cluster DNS Service's address kubelet writes into pods' resolv.conf (kubelet's `clusterDNS`, with
    `clusterDomain: cluster.local`), as kubeadm configures it; empty: pods get the node's resolv.conf."""
    kubelet_through_yurthub: bool = False
    """True: kubelet talks to yurthub (127.0.0.1:10261) from its first start and has no bootstrap kubeconfig
    of its own, so the node joins only once yurthub is installed and has got a certificate."""
    kubelet_configured: bool = True
    """False: a plain machine, as the packages leave it before `kubeadm join` or `yurtctl node join`:
    containerd running, the kubelet binary and its unit with kubeadm's drop-in installed but not enabled,
    no kubeconfig, CA, `config.yaml` or `kubeadm-flags.env` (`kubelet_configuration` is what the cluster's
    `kube-system/kubelet-config` would hold for it)."""


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def _link_or_copy(source: Path, root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def kubelet_configuration(settings: NodeSettings) -> dict[str, object]:
    """The KubeletConfiguration this node's kubelet runs with (what kubeadm keeps in kube-system/kubelet-config)."""
    return _kubelet_config(settings)


def _kubelet_config(settings: NodeSettings) -> dict[str, object]:
    config: dict[str, object] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
        "failSwapOn": False,
        "rotateCertificates": True,
        "staticPodPath": "/etc/kubernetes/manifests",
        "nodeLeaseDurationSeconds": settings.lease_duration_s,
        "nodeStatusUpdateFrequency": "4s",
        "resolvConf": "/etc/resolv.conf",
        # The host's disk is shared with everything else on the machine: never evict or GC for its sake.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
    }
    if settings.cluster_dns:
        config["clusterDNS"] = [settings.cluster_dns]
        config["clusterDomain"] = "cluster.local"
    return config


def _files(settings: NodeSettings, *, ca_pem: bytes, bootstrap_kubeconfig: str) -> dict[str, str]:
    """Every file the harness places on the node, by absolute path in the node."""
    cni = {
        "cniVersion": "1.0.0",
        "name": "yurt-edge",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": settings.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    containerd = "\n".join(
        [
            "version = 2",
            '[plugins."io.containerd.grpc.v1.cri"]',
            f'  sandbox_image = "{images.PAUSE_IMAGE}"',
            # Without CAP_SYS_RESOURCE (this machine's sandbox withholds it) runc cannot give a container a
            # negative oom_score_adj; kubelet asks for one (-998 for sandboxes). Clamp instead of failing.
            "  restrict_oom_score_adj = true",
            '[plugins."io.containerd.grpc.v1.cri".cni]',
            '  bin_dir = "/usr/lib/cni"',
            '  conf_dir = "/etc/cni/net.d"',
            '[plugins."io.containerd.internal.v1.opt"]',
            '  path = "/var/lib/containerd/opt"',
            "",
        ]
    )
    kubelet_args = f"--node-ip={settings.address} --hostname-override={settings.name}"
    if settings.kubelet_through_yurthub:
        # Later flags win; the empty bootstrap kubeconfig keeps kubelet from joining by itself.
        kubelet_args += " --kubeconfig=/etc/kubernetes/kubelet-yurthub.conf --bootstrap-kubeconfig="
    files = {
        "/etc/hostname": f"{settings.name}\n",
        "/etc/hosts": f"127.0.0.1 localhost\n{settings.address} {settings.name}\n",
        "/etc/resolv.conf": f"nameserver {settings.cloud_address}\n",
        "/etc/containerd/config.toml": containerd,
        "/etc/cni/net.d/10-yurt-edge.conflist": json.dumps(cni, indent=2) + "\n",
        "/etc/kubernetes/pki/ca.crt": ca_pem.decode(),
        "/etc/kubernetes/bootstrap-kubelet.conf": bootstrap_kubeconfig,
        "/etc/kubernetes/manifests/.keep": "",
        "/usr/lib/systemd/system/kubelet.service": (
            "[Unit]\nDescription=kubelet: The Kubernetes Node Agent\n"
            "Wants=network-online.target containerd.service\n"
            "After=network-online.target containerd.service yurt-edge-images.service\n\n"
            "[Service]\nExecStart=/usr/bin/kubelet\nRestart=always\nStartLimitInterval=0\nRestartSec=2\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        ),
        "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": (
            "[Service]\n"
            'Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf'
            ' --kubeconfig=/etc/kubernetes/kubelet.conf"\n'
            'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"\n'
            "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
            "EnvironmentFile=-/etc/default/kubelet\n"
            "ExecStart=\n"
            "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS"
            " $KUBELET_EXTRA_ARGS\n"
        ),
        "/usr/lib/systemd/system/yurt-edge-images.service": (
            "[Unit]\nDescription=Import the locally packed pod images into containerd\n"
            "After=containerd.service\nRequires=containerd.service\nBefore=kubelet.service\n\n"
            "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            "ExecStart=/bin/sh -c 'for f in /var/lib/yurt-edge/images/*.tar; do "
            'ctr -n k8s.io images import --all-platforms "$f" || exit 1; done\'\n\n'
            "[Install]\nWantedBy=multi-user.target\n"
        ),
        "/var/lib/kubelet/config.yaml": json.dumps(_kubelet_config(settings), indent=2) + "\n",
        "/var/lib/kubelet/kubeadm-flags.env": f'KUBELET_KUBEADM_ARGS="{kubelet_args}"\n',
    }
    if settings.kubelet_through_yurthub:
        files["/etc/kubernetes/kubelet-yurthub.conf"] = _KUBELET_YURTHUB_CONF.read_text()
    if not settings.kubelet_configured:
        unconfigured = ("/etc/kubernetes/", "/var/lib/kubelet/")
        files = {path: text for path, text in files.items() if not path.startswith(unconfigured)}
    return files


_ENABLED = ("containerd.service", "yurt-edge-images.service", "kubelet.service")
_BOUND = ("/var/lib/kubelet/", "/var/lib/yurt-edge/")


class Node:
    """A booted node. Build it with `boot`; `stop` kills everything in it, which also removes its link."""

    def __init__(self, settings: NodeSettings, directory: Path, group: cgroups.Group, rootfs: Path) -> None:
        self.settings = settings
        self.directory = directory
        self.group = group
        self.rootfs = rootfs
        self._proc: process.Process | None = None
        self.pid = 0
        """The node's PID 1 (its systemd), as the host sees it."""

    @classmethod
    def boot(
        cls,
        settings: NodeSettings,
        *,
        rootfs: Path,
        bins: Path,
        image_archives: list[Path],
        ca_pem: bytes,
        bootstrap_kubeconfig: str,
        directory: Path,
        group: cgroups.Group,
    ) -> Node:
        upper, state = directory / "upper", directory / "state"
        for d in (upper, directory / "work", state):
            d.mkdir(parents=True, exist_ok=True)
        for path, text in _files(settings, ca_pem=ca_pem, bootstrap_kubeconfig=bootstrap_kubeconfig).items():
            # /var/lib/kubelet and /var/lib/yurt-edge are bind mounts of the state directory (node-init.sh).
            base = state if path.startswith(_BOUND) else upper
            mode = 0o600 if path.endswith(".conf") and "kubernetes" in path else 0o644
            _write(base, path, text, mode)
        _link_or_copy(bins / "kubelet", upper, "/usr/bin/kubelet")
        for archive in image_archives:
            _link_or_copy(archive, state, f"/var/lib/yurt-edge/images/{archive.name}")
        wants = upper / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for unit in _ENABLED if settings.kubelet_configured else _ENABLED[:-1]:
            (wants / unit).unlink(missing_ok=True)
            (wants / unit).symlink_to(f"/usr/lib/systemd/system/{unit}")
        node = cls(settings, directory, group, rootfs)
        node.start()
        return node

    def start(self, *, link_up: bool = True) -> None:
        """Boot the prepared node: PID 1 in fresh namespaces, the cloud link, systemd's units."""
        settings, directory = self.settings, self.directory
        self.group.create()
        argv = [
            "unshare",
            "--cgroup",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--fork",
            "--kill-child",
            str(_INIT),
            str(self.rootfs),
            str(directory / "upper"),
            str(directory / "work"),
            str(directory / "state"),
            settings.name,
            f"{settings.address}/{settings.prefix}",
            settings.cloud_address,
        ]
        self._proc = process.Process("node-console", argv, group=self.group, log_dir=directory)
        self.pid = self._init_pid(self._proc)
        _run(["ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "eth0", "netns", str(self.pid)])
        _run(["ip", "addr", "add", f"{settings.cloud_address}/{settings.prefix}", "dev", HOST_LINK])
        if link_up:
            _run(["ip", "link", "set", HOST_LINK, "up"])
        wait_for(f"systemd on {settings.name} to finish booting", self._booted, timeout=60)
        if not settings.reachable_from_cloud:
            self.set_reachable_from_cloud(False)

    def reboot(self) -> None:
        """Power-cycle the node: every process dies at once, then it boots from the same disk. The link
        comes back in the state it was in (a node rebooted during an outage stays cut off)."""
        link_up = self.link_is_up()
        self.stop()
        self.start(link_up=link_up)

    @staticmethod
    def _init_pid(proc: process.Process) -> int:
        """The pid of unshare's child, PID 1 of the node's namespaces."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.check_running()
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.02)
        raise TimeoutError("the node's init process did not start")

    def _booted(self) -> bool:
        if self._proc is not None:
            self._proc.check_running()
        state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            raise RuntimeError(f"node {self.settings.name} booted degraded; failed units:\n{failed}")
        return state == "running"

    def run(
        self, argv: list[str], *, check: bool = True, timeout: float = 60.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node (its namespaces and cgroup), as a person with a shell there."""
        wrapped, env = process.join_argv(self.group, ["nsenter", "-t", str(self.pid), "-a", *argv])
        return subprocess.run(
            wrapped,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=stdin,
        )

    def journal(self, unit: str, lines: int = 50) -> str:
        return self.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager"], check=False).stdout

    def cut_link(self) -> None:
        """Pull the cable: the node can no longer reach the cloud, nor the cloud the node."""
        _run(["ip", "link", "set", HOST_LINK, "down"])

    def restore_link(self) -> None:
        _run(["ip", "link", "set", HOST_LINK, "up"])

    def link_is_up(self) -> bool:
        return "UP" in _run(["ip", "-br", "link", "show", HOST_LINK]).split()[1]

    def set_reachable_from_cloud(self, reachable: bool) -> None:
        """Drop (or stop dropping) connections the cloud opens to the node; the node's own stay open."""
        iptables = ["nsenter", "-t", str(self.pid), "-n", "iptables", "-w"]
        if reachable:
            _run([*iptables, "-D", "INPUT", "-j", _NAT_CHAIN], check=False)
            _run([*iptables, "-D", "FORWARD", "-j", _NAT_CHAIN], check=False)
            _run([*iptables, "-F", _NAT_CHAIN], check=False)
            _run([*iptables, "-X", _NAT_CHAIN], check=False)
            return
        _run([*iptables, "-N", _NAT_CHAIN])
        # Packets the cloud sends on connections it opened (ORIGINAL direction), including ones already
        # open, are dropped; replies on connections the node opened (REPLY direction) pass.
        _run(
            [
                *iptables,
                "-A",
                _NAT_CHAIN,
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctdir",
                "ORIGINAL",
                "-j",
                "DROP",
            ]
        )
        _run([*iptables, "-I", "INPUT", "-j", _NAT_CHAIN])
        _run([*iptables, "-I", "FORWARD", "-j", _NAT_CHAIN])

    def stop(self) -> None:
        """Kill every process of the node. Its mounts and network namespace (and so the link) go with them."""
        self.group.kill()
        # Deleting our end removes the pair now; the namespace may take seconds to die (sockets on a dead link).
        _run(["ip", "link", "del", HOST_LINK], check=False)
        if self._proc is not None:
            self._proc.stop(timeout=5)
        if link_exists():
            raise RuntimeError(f"the cloud link {HOST_LINK} survived the node")


def link_exists() -> bool:
    return subprocess.run(["ip", "link", "show", HOST_LINK], capture_output=True, check=False).returncode == 0


def _run(argv: list[str], *, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout
