"""One real Kubernetes on this machine: the control plane, a real edge node, and kwok nodes.

    with cluster.Cluster.start(cluster.Settings(kwok_nodes=20)) as c:
        c.kubectl.run("get", "nodes")
        c.node.cut_link()

`start` first clears whatever an earlier, crashed run left behind, and holds a lock so that two runs on the
same machine cannot trample each other. `stop` (or leaving the `with`) kills every process the run started,
which takes the node's mounts, network namespace and link with it, and removes the run's cgroups.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from testenv import cgroups, controlplane, images, kubeconfig, kwok, leftovers, process
from testenv import node as node_mod
from testenv.kubectl import Kubectl, node_ready, wait_for

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    return Path(os.environ.get("YURT_EDGE_CACHE", Path.home() / ".cache" / "yurt-edge"))


def _script_output(script: str, *args: str, env: dict[str, str] | None = None) -> Path:
    """Run a hack/ script that prints a cached directory on its last line (building it if needed)."""
    proc = subprocess.run(
        [str(REPO / "hack" / script), *args],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return Path(proc.stdout.strip().splitlines()[-1])


def binaries() -> Path:
    return _script_output("build-binaries.sh")


def rootfs(python: bool = True) -> Path:
    """The node's Debian root; without python3 when `python` is False (yurt-edge then runs from its executable)."""
    return _script_output("node-rootfs.sh", env=None if python else {"NODE_PYTHON": "no"})


def coredns_binaries() -> Path:
    return _script_output("build-binaries.sh", "coredns")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    real_node: bool = True
    """Boot the real edge node (needs root, namespaces and the Debian root)."""
    kwok_nodes: int = 0
    """How many simulated nodes kwok keeps Ready."""
    node: node_mod.NodeSettings = dataclasses.field(default_factory=node_mod.NodeSettings)
    services: bool = False
    """Make the real node ready for Services as kubeadm does: kube-proxy's and CoreDNS's images in its
    containerd and kubelet's clusterDNS at the `kube-dns` address (`controlplane.CLUSTER_DNS`). `services.install`
    then deploys them. Off by default, so other tests' pods keep the node's resolv.conf; the start time is the
    same either way (11-16 s here with the images cached, within the noise)."""
    node_monitor_grace_s: int = 12
    not_ready_toleration_s: int = 300
    unreachable_toleration_s: int = 300
    egress_selector_config: str | None = None
    extra_apiserver_args: tuple[str, ...] = ()
    extra_controller_manager_args: tuple[str, ...] = ()
    node_python: bool = True
    """Whether the real node's root has python3 (False: a node that needs no Python, as the converter allows)."""


def _take_lock(path: Path) -> IO[str]:
    """One cluster per machine. Another run holding the lock is waited for (YURT_EDGE_LOCK_WAIT seconds,
    default 1800; 0 fails at once), so several test sessions on one machine take turns instead of failing."""
    wait = float(os.environ.get("YURT_EDGE_LOCK_WAIT", "1800"))
    lock = path.open("w")
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock.close()
                raise RuntimeError(f"another yurt-edge test cluster is running on this machine (lock {path})") from None
            if not told:
                log.warning("waiting for another yurt-edge test cluster to finish (lock %s)", path)
                told = True
            time.sleep(1)


class Cluster:
    def __init__(self, settings: Settings, directory: Path, lock: IO[str]) -> None:
        self.settings = settings
        self.directory = directory
        self._lock = lock
        self.group = cgroups.Group("cloud")
        self.plane: controlplane.ControlPlane | None = None
        self.kwok: process.Process | None = None
        self._node: node_mod.Node | None = None

    @classmethod
    def start(cls, settings: Settings | None = None) -> Cluster:
        settings = settings or Settings()
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(cache / "cluster.lock")
        leftovers.clear(cache)
        directory = cache / "run"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        cluster = cls(settings, directory, lock)
        try:
            cluster._start()
        except BaseException:
            cluster.dump_logs()
            cluster.stop()
            raise
        return cluster

    def _start(self) -> None:
        bins = binaries()
        root = rootfs(self.settings.node_python) if self.settings.real_node else None
        archives = images.build(cache_dir() / "images") if self.settings.real_node else []
        node_settings = self.settings.node
        if self.settings.services and root is not None:
            archives += images.build_services(
                cache_dir() / "images",
                kube_proxy=bins / "kube-proxy",
                coredns=coredns_binaries() / "coredns",
                rootfs=root,
            )
            node_settings = dataclasses.replace(node_settings, cluster_dns=controlplane.CLUSTER_DNS)
        self.group.create()
        self.plane = controlplane.ControlPlane.start(
            controlplane.ControlPlaneSettings(
                advertise_address=self.settings.node.cloud_address,
                node_monitor_grace_s=self.settings.node_monitor_grace_s,
                not_ready_toleration_s=self.settings.not_ready_toleration_s,
                unreachable_toleration_s=self.settings.unreachable_toleration_s,
                egress_selector_config=self.settings.egress_selector_config,
                extra_apiserver_args=self.settings.extra_apiserver_args,
                extra_controller_manager_args=self.settings.extra_controller_manager_args,
            ),
            bins=bins,
            directory=self.directory / "cloud",
            group=self.group,
        )
        log.info("control plane up at %s", self.plane.server)
        if self.settings.kwok_nodes:
            self.kwok = kwok.start(bins, self.plane.admin_kubeconfig, self.directory / "cloud", self.group)
            self.kubectl.apply(kwok.node(f"kwok-{i}") for i in range(self.settings.kwok_nodes))
        if root is not None:
            bootstrap = kubeconfig.write(
                self.directory / "bootstrap-kubelet.conf",
                server=self.plane.cloud_server,
                ca_pem=self.plane.ca.pair.cert_pem,
                user="kubelet-bootstrap",
                token=self.plane.bootstrap_token,
            )
            self._node = node_mod.Node.boot(
                node_settings,
                rootfs=root,
                bins=bins,
                image_archives=archives,
                ca_pem=self.plane.ca.pair.cert_pem,
                bootstrap_kubeconfig=bootstrap.read_text(),
                directory=self.directory / "node",
                group=cgroups.Group("node"),
            )
            name = self.settings.node.name
            joins_later = self.settings.node.kubelet_through_yurthub or not self.settings.node.kubelet_configured
            if not joins_later:  # else it joins once a test installs yurthub, or joins the plain machine
                wait_for(f"node {name} to be Ready", lambda: self.node_is_ready(name), timeout=120)
                log.info("node %s Ready", name)
        if self.settings.kwok_nodes:
            wait_for(f"{self.settings.kwok_nodes} kwok nodes to be Ready", self._kwok_ready, timeout=120)

    @property
    def kubectl(self) -> Kubectl:
        if self.plane is None:
            raise RuntimeError("the control plane is not running")
        return self.plane.kubectl

    @property
    def node(self) -> node_mod.Node:
        if self._node is None:
            raise RuntimeError("this cluster has no real node")
        return self._node

    def node_is_ready(self, name: str) -> bool:
        if self.plane is not None:
            self.plane.check_running()
        return node_ready(self.kubectl.get("node", name))

    def _kwok_ready(self) -> bool:
        if self.kwok is not None:
            self.kwok.check_running()
        nodes = self.kubectl.get("nodes", "-l", "type=kwok")["items"]
        return sum(node_ready(n) for n in nodes) >= self.settings.kwok_nodes

    def dump_logs(self, lines: int = 40) -> None:
        """Log the tail of every component's log, and the node's kubelet journal, for a failed run."""
        for path in sorted(self.directory.glob("**/logs/*.log")):
            text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            log.error("--- %s ---\n%s", path.name, text)
        if self._node is not None:
            for unit in ("containerd", "yurt-edge-images", "kubelet"):
                log.error("--- node journal: %s ---\n%s", unit, self._node.journal(unit, lines))

    def stop(self) -> None:
        if self._node is not None:
            self._node.stop()
            self._node = None
        if self.kwok is not None:
            self.kwok.stop()
        if self.plane is not None:
            self.plane.stop()
        self.group.kill()
        cgroups.kill_and_remove([p.parent for p in self.group.paths])
        self._lock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
