"""Conversion by label on the real node: `yurtctl convert` converts a cluster whose edge nodes are kwok nodes
only (their node Jobs' pods run and complete, `testenv.kwokjobs`), leaving the real node `edge-1` a stock
node; then the node is labelled an edge node and yurt-manager (on the host, bound only to its ClusterRole)
converts it with the node Job convert would have run, from the settings convert recorded. Behind yurthub it
keeps its pod through a cut link (autonomy: the pod is never evicted); unlabelled, yurt-manager reverts it
and its files are as they were before the label; `yurtctl revert` then leaves the cluster as convert found
it. The tests run in order and build on each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import names, nodeconversion
from testenv import (
    cluster,
    converterimage,
    edgeconvert,
    eviction,
    hubinstall,
    kwokjobs,
    snapshot,
    workloads,
    yurtmanager,
)
from testenv.kubectl import node_ready, wait_for
from tests.e2e.test_yurthub_node import containers_on_node

EDGE = "edge-1"
CLOUD = "kwok-0"
EDGE_KWOK = ["edge-kwok-1", "edge-kwok-2"]
TOLERATION_S = 10
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1"
NODE_STEP_S = 420
"""Longer than the node Job may take (`--node-timeout=400` in `edgeconvert.common_args`)."""


@pytest.fixture(scope="module")
def cluster_settings() -> cluster.Settings:
    return cluster.Settings(
        node_python=False,  # the node needs nothing: the Job installs yurt-edge's self-contained executable
        kwok_nodes=1,
        not_ready_toleration_s=TOLERATION_S,
        unreachable_toleration_s=TOLERATION_S,
    )


@dataclasses.dataclass
class Env:
    kube: cluster.Cluster
    directory: Path
    before: snapshot.Snapshot
    """The whole cluster before convert."""
    flags: str
    """The real node's kubeadm-flags.env before convert."""
    convert: list[str]
    common: list[str]
    manager: yurtmanager.HostManager
    node_before: dict[str, str] = dataclasses.field(default_factory=dict)
    """The real node's files just before it was labelled."""
    container: str = ""
    """The container of `edge-app` on the node, once it runs."""


@pytest.fixture(scope="module")
def env(kube: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert kube.plane is not None
    directory = tmp_path_factory.mktemp("label")
    jobs = kwokjobs.start(cluster.binaries(), kube.plane.admin_kubeconfig, directory, kube.group)
    manager: yurtmanager.HostManager | None = None
    try:
        kube.kubectl.apply(kwokjobs.node(n) for n in EDGE_KWOK)
        wait_for("the kwok edge nodes Ready", lambda: all(ready(kube, n) for n in EDGE_KWOK), timeout=120)
        converterimage.load(kube.node, converterimage.build(cluster.cache_dir() / "images"))
        config = yurtmanager.own_kubeconfig(kube.plane, directory)
        # a workload before convert, as nodes have (kubelet's own checkpoints written before the snapshot)
        kube.kubectl.apply([workloads.pod("stock-app", EDGE)])
        wait_for("a workload on the real node", lambda: phase(kube, "stock-app") == "Running", timeout=120)
        common = edgeconvert.common_args(converterimage.IMAGE)
        convert = [
            "convert",
            f"--cloud-nodes={CLOUD}",
            "--edge-nodes=" + ",".join(EDGE_KWOK),
            f"--hub-args={HUB_ARGS}",
            "--manager-replicas=0",
            *common,
        ]
        flags = kube.node.run(["cat", hubinstall.FLAGS_ENV]).stdout
        before = snapshot.of_cluster(kube)
        # yurt-manager runs every node Job, the kwok nodes' during convert: up before convert
        manager = yurtmanager.start(config, directory / "manager", "host-manager")
        yield Env(kube, directory, before, flags, convert, common, manager)
    finally:
        if manager is not None:
            manager.stop()
        jobs.stop()


def phase(kube: cluster.Cluster, pod: str) -> str:
    return str(kube.kubectl.get("pod", pod).get("status", {}).get("phase", ""))


def ready(kube: cluster.Cluster, node: str) -> bool:
    return node_ready(kube.kubectl.get("node", node))


def node(kube: cluster.Cluster) -> dict[str, Any]:
    got: dict[str, Any] = kube.kubectl.get("node", EDGE)
    return got


def hub_active(kube: cluster.Cluster) -> bool:
    return kube.node.run(["systemctl", "is-active", "yurthub.service"], check=False).stdout.strip() == "active"


def test_convert_with_kwok_edge_nodes_only_leaves_the_real_node_a_stock_node(env: Env) -> None:
    kube = env.kube
    result = edgeconvert.yurtctl(kube, *env.convert)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in EDGE_KWOK:
        assert re.search(rf"^\s+{name}\s+converted", result.stdout, re.M), result.stdout
        assert nodeconversion.reason_of(kube.kubectl.get("node", name)) == nodeconversion.CONVERTED
    assert not re.search(rf"^\s+{EDGE}\s", result.stdout, re.M), result.stdout
    untouched = node(kube)
    assert names.EDGE_WORKER_LABEL not in untouched["metadata"]["labels"]
    assert names.AUTONOMY_ANNOTATION not in (untouched["metadata"].get("annotations") or {})
    assert nodeconversion.condition(untouched) is None
    assert kube.node.run(["cat", hubinstall.FLAGS_ENV]).stdout == env.flags
    assert not hub_active(kube)
    assert kube.kubectl.get("configmap", "-n", "kube-system", nodeconversion.SETTINGS_CONFIGMAP)["data"]
    wait_for("no node Job left", lambda: kube.kubectl.get("jobs", "-n", "kube-system")["items"] == [], timeout=30)


def test_labelled_the_real_node_is_converted_by_yurt_manager_and_its_pod_keeps_running(env: Env) -> None:
    kube = env.kube
    env.node_before = snapshot.of_node(kube.node)
    kube.kubectl.apply([workloads.pod("edge-app", EDGE)])
    wait_for("a pod on the stock node", lambda: "edge-app" in containers_on_node(kube), timeout=120)
    env.container = containers_on_node(kube)["edge-app"]
    assert eviction.tolerations(kube, "edge-app") == {
        names.NOT_READY_TAINT: TOLERATION_S,
        names.UNREACHABLE_TAINT: TOLERATION_S,
    }

    kube.kubectl.run("annotate", "node", EDGE, f"{names.AUTONOMY_ANNOTATION}=true")
    kube.kubectl.run("label", "node", EDGE, f"{names.EDGE_WORKER_LABEL}=true")
    wait_for(
        "yurt-manager to convert the labelled node",
        lambda: nodeconversion.reason_of(node(kube)) == nodeconversion.CONVERTED,
        timeout=NODE_STEP_S,
    )
    wait_for("the node Ready through yurthub", lambda: ready(kube, EDGE), timeout=60)
    assert hub_active(kube)
    assert "kubelet-yurthub.conf" in kube.node.run(["cat", hubinstall.FLAGS_ENV]).stdout
    assert hubinstall.kubelet_requests_forwarded(kube.node) > 0
    assert containers_on_node(kube)["edge-app"] == env.container  # kubelet restarted; the container did not
    forever = {names.NOT_READY_TAINT: None, names.UNREACHABLE_TAINT: None}
    wait_for(
        "yurt-manager to make the node's pods tolerate its outages forever",
        lambda: eviction.tolerations(kube, "edge-app") == forever == eviction.tolerations(kube, "stock-app"),
        timeout=60,
    )
    wait_for("its node Job deleted", lambda: kube.kubectl.get("jobs", "-n", "kube-system")["items"] == [], timeout=30)


def cloud_reachable(kube: cluster.Cluster) -> bool:
    cloud = hubinstall.yurthub_status(kube.node)["cloud"]
    assert isinstance(cloud, dict)
    return bool(cloud["reachable"])


def test_the_converted_node_keeps_its_pod_through_a_cut_link(env: Env) -> None:
    kube = env.kube
    kube.node.cut_link()
    try:
        limit = kube.settings.node_monitor_grace_s + 60
        wait_for("the cloud to mark the node NotReady", lambda: not ready(kube, EDGE), timeout=limit)
        wait_for("yurthub to see the cloud gone", lambda: not cloud_reachable(kube), timeout=30)
        wait_for(
            "the node to be tainted for longer than the pods' original tolerations",
            lambda: eviction.tainted_for(kube, EDGE) > TOLERATION_S + 15,
            timeout=limit + TOLERATION_S + 60,
        )
        for name in ("edge-app", "stock-app"):
            assert not eviction.evicted(kube, name), f"{name} on the autonomous node was evicted"
        assert containers_on_node(kube)["edge-app"] == env.container
    finally:
        kube.node.restore_link()
    wait_for(f"{EDGE} Ready again", lambda: ready(kube, EDGE), timeout=120)
    wait_for("yurthub to see the cloud again", lambda: cloud_reachable(kube), timeout=60)
    assert phase(kube, "edge-app") == "Running"


def test_unlabelled_the_node_is_reverted_and_its_files_are_as_before_the_label(env: Env) -> None:
    kube = env.kube
    kube.kubectl.run("label", "node", EDGE, f"{names.EDGE_WORKER_LABEL}-")
    wait_for(
        "yurt-manager to revert the unlabelled node",
        lambda: nodeconversion.reason_of(node(kube)) == nodeconversion.REVERTED,
        timeout=NODE_STEP_S,
    )
    wait_for("its node Job deleted", lambda: kube.kubectl.get("jobs", "-n", "kube-system")["items"] == [], timeout=30)
    wait_for("the node Ready without yurthub", lambda: ready(kube, EDGE), timeout=60)
    assert not hub_active(kube)
    assert kube.node.run(["cat", hubinstall.FLAGS_ENV]).stdout == env.flags
    assert containers_on_node(kube)["edge-app"] == env.container
    original = {names.NOT_READY_TAINT: TOLERATION_S, names.UNREACHABLE_TAINT: TOLERATION_S}
    wait_for(
        "yurt-manager to give the pod back its original tolerations (not an edge node: not autonomous)",
        lambda: eviction.tolerations(kube, "edge-app") == original,
        timeout=60,
    )
    with contextlib.suppress(TimeoutError):  # the last writes settle a moment later; the assert shows what differs
        wait_for(
            "the node's files as before the label",
            lambda: snapshot.diff(env.node_before, snapshot.of_node(kube.node)) == [],
            timeout=60,
        )
    left = snapshot.diff(env.node_before, snapshot.of_node(kube.node))
    assert not left, "the node's revert left differences:\n" + "\n".join(left)


def test_revert_leaves_the_cluster_and_the_node_as_convert_found_them(env: Env) -> None:
    kube = env.kube
    kube.kubectl.run("delete", "pod", "edge-app", "--wait=true", timeout=120)
    result = edgeconvert.yurtctl(kube, "revert", *env.common)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in EDGE_KWOK:
        assert re.search(rf"^\s+{name}\s+reverted", result.stdout, re.M), result.stdout
    # run outside the cluster, yurt-manager is stopped by its operator after revert, who removes the Lease
    # it renewed meanwhile
    env.manager.stop()
    kube.kubectl.run("delete", "lease", "-n", "kube-system", "yurt-manager", "--ignore-not-found")
    with contextlib.suppress(TimeoutError):  # garbage collection settles a little later; the assert shows what differs
        wait_for("the cluster to settle as it was", lambda: snapshot.since(kube, env.before) == [], timeout=90)
    left = snapshot.since(kube, env.before)
    assert not left, "revert left differences:\n" + "\n".join(left)
    assert ready(kube, EDGE)
