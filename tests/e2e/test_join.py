"""`yurtctl join` end to end: a fresh real machine with no kubelet configured (containerd running, the kubelet
and kubeadm's unit installed, never started) joins the cluster behind yurthub from its first boot.

The distribution is copied onto it the way an operator does (`make dist`'s tree as /opt/yurt-edge, from the
cached build of this source); the cloud publishes its kubelet configuration as kubeadm does
(`kube-system/kubelet-config`) and has a NodePool. `yurtctl join` runs on the cloud side, its printed command
on the machine with the token on standard input. The tests run in order and build on each other: a wrong CA
hash is refused with the machine untouched; the join (the token never on any process's command line or in
its environment meanwhile); a pod that survives a cut link and a kubelet restart offline; the node step of
conversion by label leaving the joined node alone; `yurtctl node reset`, after which the machine's files
are as they were before the join.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shlex
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter import cli, components
from testenv import cluster, exebuild, hubinstall, nodepools, snapshot
from testenv import node as node_mod
from testenv.kubectl import node_ready, wait_for
from tests.e2e.test_yurthub_node import containers_on_node, pod, running_pods

NODE = "edge-1"
POOL = "hangzhou"
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1"
SECRET_FILES = (
    "/etc/yurthub/join-token",
    "/etc/yurthub/yurthub.env",
    "/etc/kubernetes/kubelet-yurthub.conf",
    "/var/lib/yurt-edge/join/state.json",
)


@pytest.fixture(scope="module")
def cluster_settings() -> cluster.Settings:
    return cluster.Settings(node=node_mod.NodeSettings(kubelet_configured=False), node_python=False)


def install_distribution(node: node_mod.Node) -> None:
    """yurt-edge's self-contained tree (built once per source and cached: `make dist`'s output) as the
    machine's /opt/yurt-edge, copied in through its state directory as an operator's scp would."""
    staging = node.directory / "state" / "var/lib/yurt-edge/dist"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(exebuild.build().tree, staging, symlinks=True)
    node.run(["sh", "-c", "cp -a /var/lib/yurt-edge/dist /opt/yurt-edge && rm -rf /var/lib/yurt-edge/dist"])


@dataclasses.dataclass
class Machine:
    kube: cluster.Cluster
    before: dict[str, str]
    token: str
    command: list[str]


@pytest.fixture(scope="module")
def machine(kube: cluster.Cluster) -> Machine:
    assert kube.plane is not None
    install_distribution(kube.node)
    kube.kubectl.apply([components.nodepool_crd()])
    wait_for(
        "the NodePool CRD to be served",
        lambda: "nodepools" in kube.kubectl.run("api-resources", "--api-group=apps.openyurt.io"),
        timeout=60,
    )
    kube.kubectl.apply([nodepools.nodepool(POOL)])
    config = json.dumps(node_mod.kubelet_configuration(kube.node.settings), indent=2)
    kube.kubectl.run("create", "configmap", "kubelet-config", "-n", "kube-system", f"--from-literal=kubelet={config}")
    before = snapshot.of_node(kube.node)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(
            [
                "--kubeconfig",
                str(kube.plane.admin_kubeconfig),
                "join",
                "--server",
                kube.plane.cloud_server,
                "--nodepool",
                POOL,
                "--node-name",
                NODE,
                "--ttl",
                "30m",
            ]
        )
    assert rc == 0
    lines = out.getvalue().splitlines()
    token = next(line.split()[1] for line in lines if line.startswith("token: "))
    command = shlex.split(next(line for line in lines if "yurtctl node join" in line))
    return Machine(kube, before, token, command)


class ProcessWatch:
    """Reads every process's command line and environment on this host (the node's processes included:
    its PID namespace is a child of ours) until stopped, and keeps any that holds `secret`."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.hits: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.rounds < 100_000:
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                for what in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):
                        if self.secret in (proc / what).read_bytes():
                            self.hits.append(f"{proc.name}/{what}: {(proc / 'cmdline').read_bytes()[:200]!r}")
            self.rounds += 1
            self._stop.wait(0.05)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_wrong_ca_hash_is_refused_and_the_machine_is_untouched(machine: Machine) -> None:
    argv = list(machine.command)
    argv[argv.index("--ca-cert-hash") + 1] = "sha256:" + "0" * 64
    done = machine.kube.node.run(argv, stdin=machine.token + "\n", check=False, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refusing to trust" in done.stderr
    assert snapshot.diff(machine.before, snapshot.of_node(machine.kube.node)) == []


def test_the_machine_joins_behind_yurthub_from_its_first_start(machine: Machine) -> None:
    kube, node = machine.kube, machine.kube.node
    assert node.run(["systemctl", "is-enabled", "kubelet"], check=False).stdout.strip() == "disabled"
    with ProcessWatch(machine.token.split(".")[1]) as watch:
        done = node.run(
            [*machine.command, f"--hub-args={HUB_ARGS}"], stdin=machine.token + "\n", check=False, timeout=600
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"node {NODE} joined in NodePool {POOL}" in done.stdout
    assert watch.rounds > 0 and watch.hits == []  # never on a command line or in an environment

    registered = kube.kubectl.get("node", NODE)
    assert node_ready(registered)
    labels = registered["metadata"]["labels"]
    assert labels["apps.openyurt.io/nodepool"] == POOL and labels["openyurt.io/is-edge-worker"] == "true"

    # kubelet knows only yurthub: no kubeconfig of its own, no bootstrap one; yurthub counted its requests.
    cmdline = node.run(["sh", "-c", "tr '\\0' ' ' < /proc/$(pidof kubelet)/cmdline"]).stdout
    assert "--kubeconfig=/etc/kubernetes/kubelet-yurthub.conf --bootstrap-kubeconfig= " in cmdline + " "
    for absent in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/bootstrap-kubelet.conf"):
        assert node.run(["test", "-e", absent], check=False).returncode == 1, absent
    assert hubinstall.kubelet_requests_forwarded(node) > 0
    status = hubinstall.yurthub_status(node)
    assert status["certificates"]["client"]["source"] == "csr"  # type: ignore[index]

    modes = node.run(["stat", "-c", "%a %U %n", *SECRET_FILES]).stdout.split("\n")
    assert [m.split()[0] for m in modes if m] == ["600"] * len(SECRET_FILES), modes
    assert (
        machine.token not in node.run(["cat", "/etc/yurthub/yurthub.env", "/var/lib/kubelet/kubeadm-flags.env"]).stdout
    )

    again = node.run(machine.command, stdin=machine.token + "\n", check=False, timeout=300)
    assert again.returncode == 0, again.stderr  # idempotent: a re-run checks and changes nothing


@pytest.fixture(scope="module")
def running(machine: Machine) -> Iterator[Machine]:
    machine.kube.kubectl.apply([pod("joined")])
    wait_for("a pod to run on the joined node", lambda: "joined" in running_pods(machine.kube), timeout=180)
    yield machine


def test_its_pod_survives_a_cut_link_and_a_kubelet_restart_offline(running: Machine) -> None:
    kube, node = running.kube, running.kube.node
    on_node = containers_on_node(kube)
    assert "joined" in on_node
    node.cut_link()
    try:
        wait_for(
            "yurthub to see the cloud gone",
            lambda: hubinstall.yurthub_status(node)["cloud"]["reachable"] is False,  # type: ignore[index]
            timeout=60,
        )
        node.run(["systemctl", "restart", "kubelet"])
        healthz = "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | socat -t 5 - TCP:127.0.0.1:10248,shut-none"
        wait_for(
            "kubelet healthy offline", lambda: "ok" in node.run(["sh", "-c", healthz], check=False).stdout, timeout=90
        )
        assert containers_on_node(kube) == on_node  # the same container, never restarted
    finally:
        node.restore_link()
    wait_for("the node Ready again", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=120)
    assert "joined" in running_pods(kube)


def test_the_conversion_step_leaves_the_joined_node_alone(running: Machine) -> None:
    """What yurt-manager's conversion by label runs on an edge node: convert is a no-op here, revert refuses
    (it would take away the only kubeconfig kubelet has), and the node stays Ready with its pod."""
    kube, node = running.kube, running.kube.node
    yurtctl = ["/opt/yurt-edge/bin/yurtctl", "node"]
    converted = node.run([*yurtctl, "convert", f"--node-name={NODE}"], check=False, timeout=120)
    assert converted.returncode == 0, converted.stderr
    reverted = node.run([*yurtctl, "revert", f"--node-name={NODE}"], check=False, timeout=120)
    assert reverted.returncode == 1 and "yurtctl node reset" in reverted.stderr
    assert node.run(["systemctl", "is-active", "kubelet", "yurthub"]).stdout.split() == ["active", "active"]
    assert node_ready(kube.kubectl.get("node", NODE)) and "joined" in running_pods(kube)


def test_reset_leaves_the_machine_as_it_was_before_the_join(running: Machine) -> None:
    kube, node = running.kube, running.kube.node
    done = node.run(["/opt/yurt-edge/bin/yurtctl", "node", "reset"], check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"kubectl delete node {NODE}" in done.stdout
    for unit in ("kubelet", "yurthub"):
        assert node.run(["systemctl", "is-active", unit], check=False).stdout.strip() != "active"
    assert node.run(["ctr", "-n", "k8s.io", "containers", "list", "--quiet"]).stdout.strip() == ""
    assert snapshot.diff(running.before, snapshot.of_node(kube.node)) == []
    again = node.run(["/opt/yurt-edge/bin/yurtctl", "node", "reset"], check=False, timeout=60)
    assert again.returncode == 0 and "nothing to reset" in again.stdout
