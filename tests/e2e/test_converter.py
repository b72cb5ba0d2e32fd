"""`yurtctl convert --tunnel` / `revert` and yurt-manager on the real local cluster: the real node (converted
through a Job running on it) and four kwok nodes (cloud nodes). The tests run in order and build on each
other: dry run, convert, the tunnel, autonomy through an outage, revert; the cluster and the node's files are
snapshotted before convert and compared after the dry run and after revert.

Convert and revert go through yurt-manager: yurtctl labels the edge node and follows the node condition
yurt-manager writes while it runs the node's Job (conversion by label), so yurt-manager is up from the first
convert to the end of revert.

yurt-manager and yurt-tunnel-server run on the host from their console scripts, beside the rest of this
test cluster's control plane, since the cloud nodes are kwok nodes, which run nothing: convert installs
their Deployments scaled to 0 (`--manager-replicas=0`, `--tunnel-server-replicas=0`), the way they are
installed where they run beside kube-apiserver. As an operator does for a tunnel beside the control plane,
the test prepares the tunnel's certificates (a Secret the chart is told to use) and boots kube-apiserver
with an egress selector that sends its traffic to nodes through the server's HTTP CONNECT port. Until the
node is converted the server dials it directly (it is not an edge node yet); after, only through its agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import helm, names, nodeconversion
from testenv import (
    cluster,
    controlplane,
    converterimage,
    edgeconvert,
    eviction,
    hubinstall,
    pki,
    snapshot,
    tunnelhost,
    workloads,
    yurtmanager,
)
from testenv.kubectl import KubectlError, node_ready, wait_for

TOLERATION_S = 10
EDGE = "edge-1"
CLOUD = [f"kwok-{i}" for i in range(4)]
"""Enough healthy nodes that two nodes down is a partial outage: with most nodes of a zone down, the node
lifecycle controller assumes the control plane lost the network and evicts nothing at all."""
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1"
TUNNEL_CA = pki.CertificateAuthority("operator-tunnel-ca")


@dataclasses.dataclass(frozen=True)
class TunnelPrep:
    certs: tunnelhost.Certs
    connect_port: int


@pytest.fixture(scope="module")
def tunnel_prep(tmp_path_factory: pytest.TempPathFactory) -> TunnelPrep:
    return TunnelPrep(
        edgeconvert.issue_certs(TUNNEL_CA, tmp_path_factory.mktemp("tunnel-pki")), controlplane.free_port()
    )


@pytest.fixture(scope="module")
def cluster_settings(tunnel_prep: TunnelPrep) -> cluster.Settings:
    return cluster.Settings(
        node_python=False,  # the node needs nothing: the Job installs yurt-edge's self-contained executable
        kwok_nodes=len(CLOUD),
        not_ready_toleration_s=TOLERATION_S,
        unreachable_toleration_s=TOLERATION_S,
        egress_selector_config=tunnelhost.egress_selector(tunnel_prep.certs, tunnel_prep.connect_port),
    )


@dataclasses.dataclass
class Env:
    kube: cluster.Cluster
    manager_kubeconfig: Path
    directory: Path
    before: tuple[dict[str, Any], dict[str, str]]
    server: tunnelhost.Server
    convert: list[str]
    """`yurtctl convert` with this cluster's options."""
    common: list[str]
    """Flags convert and revert share."""
    manager: yurtmanager.HostManager | None = None


def phase(kube: cluster.Cluster, name: str) -> str:
    return str(kube.kubectl.get("pod", name).get("status", {}).get("phase", ""))


@pytest.fixture(scope="module")
def env(kube: cluster.Cluster, tunnel_prep: TunnelPrep, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert kube.plane is not None
    directory = tmp_path_factory.mktemp("converter")
    certs = tunnel_prep.certs
    server = tunnelhost.server(
        certs,
        directory / "tunnel",
        "beside-apiserver",
        connect_port=tunnel_prep.connect_port,
        agent_ca=kube.plane.directory / "pki" / "ca.crt",  # agents present kubelet's certificate
        kubeconfig=kube.plane.admin_kubeconfig,
        extra=("--dial-timeout=5",),
    )
    values = edgeconvert.prepare(kube, certs, directory)
    converterimage.load(kube.node, converterimage.build(cluster.cache_dir() / "images"))
    config = yurtmanager.own_kubeconfig(kube.plane, directory)
    kube.kubectl.apply([workloads.pod("stock-app", EDGE)])
    wait_for("a workload on the edge node", lambda: phase(kube, "stock-app") == "Running", timeout=120)
    common = edgeconvert.common_args(converterimage.IMAGE)
    convert = edgeconvert.convert_args(kube, server, values, converterimage.IMAGE, CLOUD, HUB_ARGS)
    e = Env(kube, config, directory, snapshot.of_cluster(kube), server, convert, common)
    yield e
    if e.manager is not None:
        e.manager.stop()
    server.stop()


yurtctl = edgeconvert.yurtctl


def test_dry_run_prints_the_whole_plan_and_changes_nothing(env: Env) -> None:
    result = yurtctl(env.kube, *env.convert, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        f"Node {EDGE}: label {names.EDGE_WORKER_LABEL}=true, annotation {names.AUTONOMY_ANNOTATION}=true",
        f"Node kwok-0: label {names.EDGE_WORKER_LABEL}=false",
        "Deployment kube-system/yurt-manager",
        "ClusterRole yurt-manager",
        f"Job kube-system/yurtctl-convert-{EDGE}",
        "/var/lib/kubelet/kubeadm-flags.env",
        "/etc/systemd/system/yurthub.service",
        f"helm   upgrade --install {helm.RELEASE}",
        f"Deployment kube-system/{helm.RELEASE}",
        f"ConfigMap kube-system/{helm.CA_CONFIGMAP}",
        "/etc/systemd/system/yurt-tunnel-agent.service",
        "--tunnel-server-addr=",
        "nothing was changed",
    ):
        assert expected in out, out
    left = snapshot.since(env.kube, env.before)
    assert not left, "the dry run changed:\n" + "\n".join(left)


def test_a_node_whose_kubelet_does_not_come_back_through_yurthub_is_rolled_back(env: Env) -> None:
    kube = env.kube
    # From here on the node is labelled, and it is cut off from the cloud while kubelet goes nowhere: without
    # yurt-manager its pods would be evicted after the test cluster's short tolerations.
    env.manager = yurtmanager.start(env.manager_kubeconfig, env.directory, "host-manager")
    flags = kube.node.run(["cat", "/var/lib/kubelet/kubeadm-flags.env"]).stdout
    # yurthub pointed at a port where no apiserver listens: it serves, but kubelet gets nowhere through it
    broken = [a for a in env.convert if not a.startswith(("--hub-args", "--node-timeout"))]
    broken += [f"--hub-args={HUB_ARGS} --server-addr=https://{kube.settings.node.cloud_address}:1", "--node-timeout=90"]
    result = yurtctl(kube, *broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"^\s+{EDGE}\s+FAILED: .*rolled back", result.stdout, re.M), result.stdout
    assert "1 of 1 nodes failed and were rolled back" in result.stdout
    assert kube.node.run(["cat", "/var/lib/kubelet/kubeadm-flags.env"]).stdout == flags
    assert kube.node.run(["systemctl", "is-active", "yurthub.service"], check=False).stdout.strip() != "active"
    wait_for("the node Ready again without yurthub", functools.partial(ready, kube, EDGE), timeout=60)
    assert kube.kubectl.get("jobs", "-n", "kube-system")["items"], "the failed Job is kept for diagnosis"
    condition = nodeconversion.condition(kube.kubectl.get("node", EDGE)) or {}
    assert condition.get("reason") == nodeconversion.CONVERT_FAILED and "rolled back" in condition["message"]
    described = kube.kubectl.run("describe", "node", EDGE)
    assert nodeconversion.CONDITION in described and nodeconversion.CONVERT_FAILED in described


def test_a_convert_killed_halfway_is_finished_by_the_next_run(env: Env) -> None:
    kube = env.kube
    assert kube.plane is not None
    binary = shutil.which("yurtctl", path=os.path.dirname(sys.executable))
    assert binary is not None
    proc = subprocess.Popen(
        [binary, f"--kubeconfig={kube.plane.admin_kubeconfig}", *env.convert],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the node Job to be running", lambda: job_running(kube), timeout=120)
    finally:
        proc.kill()
        proc.wait()
    labels = kube.kubectl.get("node", EDGE)["metadata"]["labels"]
    assert labels.get(names.EDGE_WORKER_LABEL) == "true"


def job_running(kube: cluster.Cluster) -> bool:
    pods = kube.kubectl.get("pods", "-n", "kube-system", "-l", "yurtctl.openyurt.io/node-job")["items"]
    return any(
        p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in pods
    )


def test_convert_puts_the_edge_node_behind_yurthub_and_labels_the_nodes(env: Env) -> None:
    kube = env.kube
    result = yurtctl(kube, *env.convert)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^\s+{EDGE}\s+converted", result.stdout, re.M), result.stdout
    labels = {
        n["metadata"]["name"]: n["metadata"]["labels"].get(names.EDGE_WORKER_LABEL)
        for n in kube.kubectl.get("nodes")["items"]
    }
    assert labels == {EDGE: "true"} | dict.fromkeys(CLOUD, "false")
    assert hubinstall.kubelet_requests_forwarded(kube.node) > 0
    assert kube.node.run(["systemctl", "is-active", "yurthub.service"]).stdout.strip() == "active"
    # no python3 on this node: yurthub runs from the executable the Job installed
    assert kube.node.run(["sh", "-c", "command -v python3"], check=False).returncode != 0
    pid = kube.node.run(["systemctl", "show", "-P", "MainPID", "yurthub.service"]).stdout.strip()
    exe = kube.node.run(["readlink", f"/proc/{pid}/exe"]).stdout.strip()
    assert exe == "/opt/yurt-edge/lib/yurt-edge/yurt-edge"
    assert kube.kubectl.get("deployment", "-n", "kube-system", "yurt-manager")["spec"]["replicas"] == 0
    assert (nodeconversion.condition(kube.kubectl.get("node", EDGE)) or {}).get("reason") == nodeconversion.CONVERTED
    # yurt-manager deletes a node's Job once it wrote the node converted: a moment after yurtctl saw that
    wait_for("no node Job left", lambda: kube.kubectl.get("jobs", "-n", "kube-system")["items"] == [], timeout=30)
    wait_for("the edge node Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", EDGE)), timeout=60)
    again = yurtctl(kube, *env.convert)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "converted already" in again.stdout


def tunnel_bytes(server: tunnelhost.Server) -> float:
    """Bytes the server received from its agents' streams (directly dialled streams are not counted)."""
    found = re.search(r'^yurt_tunnel_agents_bytes_total\{direction="received"\} (\S+)', server.metrics(), re.M)
    assert found is not None, server.metrics()
    return float(found.group(1))


def logs_ok(kube: cluster.Cluster, name: str) -> bool:
    try:
        kube.kubectl.run("logs", "-n", "default", name, timeout=30)
    except KubectlError:
        return False
    return True


def test_after_convert_kubectl_reaches_the_edge_node_behind_nat_through_the_tunnel(env: Env) -> None:
    kube = env.kube
    assert kube.node.run(["systemctl", "is-active", "yurt-tunnel-agent.service"]).stdout.strip() == "active"
    wait_for(
        "the edge node's agent on the server",
        lambda: EDGE in [a["node"] for a in env.server.status()["agents"]],
        timeout=60,
    )
    assert kube.kubectl.get("deployment", "-n", "kube-system", helm.RELEASE)["spec"]["replicas"] == 0
    kube.node.set_reachable_from_cloud(False)
    try:
        node = kube.settings.node
        with pytest.raises(OSError), socket.create_connection((node.address, 10250), timeout=3):
            pass  # the cloud cannot open a connection to the node's kubelet any more
        before = tunnel_bytes(env.server)
        out = kube.kubectl.run("exec", "-n", "default", "stock-app", "--", "echo", "through-the-tunnel", timeout=30)
        assert out.strip() == "through-the-tunnel"
        # logs rides kube-apiserver's pooled HTTP/2 connection to the kubelet: one opened before the node
        # went behind NAT would be cut once, and the next attempt opens a new one through the tunnel
        wait_for("kubectl logs through the tunnel", lambda: logs_ok(kube, "stock-app"), timeout=30)
        assert tunnel_bytes(env.server) > before
    finally:
        kube.node.set_reachable_from_cloud(True)


def ready(kube: cluster.Cluster, node: str) -> bool:
    return node_ready(kube.kubectl.get("node", node))


def cloud_reachable(kube: cluster.Cluster) -> bool:
    cloud = hubinstall.yurthub_status(kube.node)["cloud"]
    assert isinstance(cloud, dict)
    return bool(cloud["reachable"])


def running_on_node(kube: cluster.Cluster, pod_name: str) -> bool:
    """Whether containerd on the node runs the `main` container of `pod_name` (asked on the node, offline too)."""
    tasks = kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"]).stdout.splitlines()[1:]
    for cid in [line.split()[0] for line in tasks if line.split()[-1] == "RUNNING"]:
        info = json.loads(kube.node.run(["ctr", "-n", "k8s.io", "containers", "info", cid]).stdout)
        labels = info.get("Labels") or {}
        if labels.get("io.kubernetes.container.name") == "main" and labels.get("io.kubernetes.pod.name") == pod_name:
            return True
    return False


def test_an_autonomous_node_keeps_its_pods_through_an_outage_while_a_plain_node_loses_them(env: Env) -> None:
    kube = env.kube
    assert kube.plane is not None and kube.kwok is not None
    # a second edge node, not autonomous, that never heartbeats: down for the whole test (labelled an edge
    # node, so yurt-manager starts its node Job, whose pod never starts: no kubelet; revert removes it)
    plain = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "edge-plain", "labels": {names.EDGE_WORKER_LABEL: "true"}},
    }
    kube.kubectl.apply([plain])
    kube.kubectl.apply([workloads.pod("edge-app", EDGE), workloads.pod("plain-app", "edge-plain")])
    wait_for("the edge pod to run", lambda: phase(kube, "edge-app") == "Running", timeout=120)
    forever = {names.NOT_READY_TAINT: None, names.UNREACHABLE_TAINT: None}
    wait_for(
        "yurt-manager to make the edge pods tolerate forever",
        lambda: eviction.tolerations(kube, "edge-app") == forever == eviction.tolerations(kube, "stock-app"),
        timeout=60,
    )
    assert eviction.tolerations(kube, "plain-app") == dict.fromkeys(forever, TOLERATION_S)

    kube.node.cut_link()
    limit = kube.settings.node_monitor_grace_s + TOLERATION_S + 90
    wait_for("the plain node's pod to be evicted", lambda: eviction.evicted(kube, "plain-app"), timeout=limit)
    wait_for(
        "the edge node to be tainted for longer than the tolerations",
        lambda: eviction.tainted_for(kube, EDGE) > TOLERATION_S + 15,
        timeout=limit,
    )
    for name in ("edge-app", "stock-app"):
        assert not eviction.evicted(kube, name), f"{name} on the autonomous node was evicted"

    # rebooted while cut off: yurthub and the agent start again from the executable on the node's disk (the
    # node has no python3), and kubelet runs the edge pod again from yurthub's cache
    kube.node.reboot()
    hubinstall.wait_until_serving(kube.node)
    for unit in ("yurthub.service", "yurt-tunnel-agent.service"):
        assert kube.node.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
    wait_for("yurthub to see the cloud gone", lambda: not cloud_reachable(kube), timeout=30)
    wait_for("the edge pod to run again on the rebooted node", lambda: running_on_node(kube, "edge-app"), timeout=180)

    kube.node.restore_link()
    wait_for(f"{EDGE} Ready again", functools.partial(ready, kube, EDGE), timeout=120)
    kube.kubectl.run("delete", "pod", "plain-app", "--force", "--grace-period=0", "--ignore-not-found")
    kube.kubectl.run("delete", "node", "edge-plain")
    kube.kubectl.run("delete", "pod", "edge-app", "--wait=true", timeout=120)


def test_revert_leaves_the_cluster_and_the_node_as_convert_found_them(env: Env) -> None:
    kube = env.kube
    result = yurtctl(kube, "revert", *env.common)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^\s+{EDGE}\s+reverted", result.stdout, re.M), result.stdout
    # yurt-manager reverted the node (revert only relabelled it and followed); it runs outside the cluster
    # (replicas 0), so its operator stops it after revert, and removes the Lease it renewed meanwhile
    assert env.manager is not None
    env.manager.stop()
    env.manager = None
    kube.kubectl.run("delete", "lease", "-n", "kube-system", "yurt-manager", "--ignore-not-found")
    assert f"{helm.RELEASE} uninstalled" in result.stdout
    assert (
        kube.node.run(["systemctl", "is-active", "yurt-tunnel-agent.service"], check=False).stdout.strip() != "active"
    )
    with contextlib.suppress(TimeoutError):  # garbage collection settles a little later; the assert shows what differs
        wait_for("the cluster to settle as it was", lambda: snapshot.since(kube, env.before) == [], timeout=90)
    left = snapshot.since(kube, env.before)
    assert not left, "revert left differences:\n" + "\n".join(left)
    assert node_ready(kube.kubectl.get("node", EDGE))
