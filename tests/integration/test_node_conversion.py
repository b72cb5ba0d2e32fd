"""Conversion by label against the real kube-apiserver and controller-manager (its Job controller): yurt-manager
from its console script, with its own kubeconfig bound to exactly the ClusterRole and Role `yurtctl convert`
installs, converts kwok nodes as they are labelled and reverts them as they are not.

The node Jobs' pods run on kwok nodes played by a kwok controller of this module: a pod of a node Job starts,
then, a moment later, completes, or, on the nodes named in `BROKEN`, fails with the message a node Job whose
kubelet did not come back through yurthub leaves (`yurtctl node convert` rolled the node back). So what is
tested here is yurt-manager's side: which Jobs it starts, when, how many at once, and what it tells.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import components, names, nodeconversion, nodepool
from testenv import cluster, kwokjobs, nodepools, yurtmanager
from testenv.kubectl import wait_for

NC = nodeconversion
BROKEN = ["broken-1"]
FAILURE = "kubelet did not come back Ready through yurthub within 60s; node broken-1 rolled back"
BOUND = 2
SETTINGS = NC.JobSettings(image="yurt-edge/converter:test", node_timeout_s=120, parallel=5)


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        assert c.plane is not None
        stages = kwokjobs.pod_stages(BROKEN, FAILURE, complete_after_ms=2500)
        played = kwokjobs.start(
            cluster.binaries(), c.plane.admin_kubeconfig, c.directory / "cloud", c.group, stages=stages
        )
        try:
            c.kubectl.apply([NC.settings_configmap(SETTINGS)])
            yield c
        finally:
            played.stop()


@pytest.fixture(scope="module")
def config(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert cloud.plane is not None
    return yurtmanager.own_kubeconfig(cloud.plane, tmp_path_factory.mktemp("manager"))


def start(config: Path, directory: Path, identity: str) -> yurtmanager.HostManager:
    return yurtmanager.start(
        config,
        directory,
        identity,
        "--resync-seconds=0.5",
        "--leader-elect-lease-duration=4",
        f"--max-parallel-conversions={BOUND}",
    )


@pytest.fixture(scope="module")
def manager(config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[yurtmanager.HostManager]]:
    """The running yurt-manager, in a list a test may replace it in (a restart)."""
    directory = tmp_path_factory.mktemp("replicas")
    box = [start(config, directory, "conv-a")]
    yield box
    for m in box:
        m.stop()
        logging.getLogger(__name__).info("%s log:\n%s", m.log.stem, m.log.read_text()[-20000:])


def add_nodes(cloud: cluster.Cluster, *names_: str) -> None:
    cloud.kubectl.apply(kwokjobs.node(n) for n in names_)
    wait_for(
        "the kwok nodes Ready",
        lambda: all(reason_ready(cloud.kubectl.get("node", n)) for n in names_),
        timeout=60,
    )


def reason_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in node["status"].get("conditions") or [])


def label(cloud: cluster.Cluster, value: str | None, *nodes: str) -> None:
    arg = f"{names.EDGE_WORKER_LABEL}={value}" if value is not None else f"{names.EDGE_WORKER_LABEL}-"
    cloud.kubectl.run("label", "node", *nodes, arg, "--overwrite")


def conversion(cloud: cluster.Cluster, node: str) -> dict[str, Any]:
    return NC.condition(cloud.kubectl.get("node", node)) or {}


def reason(cloud: cluster.Cluster, node: str) -> str:
    return str(conversion(cloud, node).get("reason", ""))


def jobs_of(cloud: cluster.Cluster, nodes: list[str]) -> list[dict[str, Any]]:
    listed = cloud.kubectl.get("jobs", "-n", components.NAMESPACE)["items"]
    return [j for j in listed if j["metadata"]["labels"].get(components.JOB_LABEL) in nodes]


def events(cloud: cluster.Cluster, node: str, why: str) -> int:
    listed = cloud.kubectl.get("events", "-n", "default", f"--field-selector=involvedObject.name={node}")["items"]
    return sum(1 for e in listed if e.get("reason") == why and e.get("source", {}).get("component") == "yurt-manager")


def metric(m: yurtmanager.HostManager, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", m.get("/metrics")[1], re.M)
    return float(found.group(1)) if found else 0.0


STARTED = 'yurt_manager_node_conversions_total{what="started"}'
PASSES = "yurt_manager_sync_passes_total"


def yurtctl(cloud: cluster.Cluster, *args: str) -> str:
    assert cloud.plane is not None
    binary = shutil.which("yurtctl", path=os.path.dirname(sys.executable))
    assert binary is not None
    return subprocess.run(
        [binary, f"--kubeconfig={cloud.plane.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def test_a_labelled_node_is_converted_and_an_unlabelled_one_reverted(
    cloud: cluster.Cluster, manager: list[yurtmanager.HostManager]
) -> None:
    add_nodes(cloud, "edge-a", "bystander")
    label(cloud, "true", "edge-a")
    wait_for("edge-a converted", lambda: reason(cloud, "edge-a") == NC.CONVERTED, timeout=60)
    assert conversion(cloud, "edge-a")["status"] == "True"
    assert jobs_of(cloud, ["edge-a"]) == []  # removed once it succeeded
    assert events(cloud, "edge-a", NC.CONVERTING) == 1 and events(cloud, "edge-a", NC.CONVERTED) == 1
    described = cloud.kubectl.run("describe", "node", "edge-a")
    assert NC.CONDITION in described and NC.CONVERTED in described
    rows = {line.split()[0]: line.split() for line in yurtctl(cloud, "get", "nodes").splitlines()[1:]}
    assert rows["edge-a"][1:5] == ["true", "-", "yes", NC.CONVERTED]
    assert rows["bystander"][1:5] == ["-", "-", "no", "-"]

    label(cloud, None, "edge-a")
    wait_for("edge-a reverted", lambda: reason(cloud, "edge-a") == NC.REVERTED, timeout=60)
    assert conversion(cloud, "edge-a")["status"] == "False"
    assert jobs_of(cloud, ["edge-a"]) == [] and events(cloud, "edge-a", NC.REVERTED) == 1
    assert conversion(cloud, "bystander") == {}  # never an edge node: never touched
    assert events(cloud, "bystander", NC.CONVERTING) == 0


def test_a_failing_node_is_rolled_back_once_keeps_failed_and_is_tried_again_only_when_asked(
    cloud: cluster.Cluster, manager: list[yurtmanager.HostManager]
) -> None:
    m = manager[0]
    add_nodes(cloud, *BROKEN)
    label(cloud, "true", *BROKEN)
    wait_for("the failure recorded", lambda: reason(cloud, "broken-1") == NC.CONVERT_FAILED, timeout=60)
    message = str(conversion(cloud, "broken-1")["message"])
    assert FAILURE in message and NC.RETRY in message, message
    assert events(cloud, "broken-1", NC.CONVERT_FAILED) == 1
    (kept,) = jobs_of(cloud, BROKEN)  # kept for diagnosis
    started, passes = metric(m, STARTED), metric(m, PASSES)
    wait_for("ten more passes", lambda: metric(m, PASSES) >= passes + 10, timeout=60)
    assert metric(m, STARTED) == started, "the failed node was started again by itself"
    assert events(cloud, "broken-1", NC.CONVERTING) == 1
    assert [j["metadata"]["uid"] for j in jobs_of(cloud, BROKEN)] == [kept["metadata"]["uid"]]

    cloud.kubectl.run("annotate", "node", "broken-1", f"{NC.RETRY}=try-2", "--overwrite")
    wait_for("a second attempt", lambda: events(cloud, "broken-1", NC.CONVERTING) == 2, timeout=60)
    wait_for("its failure recorded", lambda: events(cloud, "broken-1", NC.CONVERT_FAILED) == 2, timeout=60)
    passes = metric(m, PASSES)
    wait_for("ten more passes", lambda: metric(m, PASSES) >= passes + 10, timeout=60)
    assert events(cloud, "broken-1", NC.CONVERTING) == 2  # asked once, tried once
    (again,) = jobs_of(cloud, BROKEN)
    assert again["metadata"]["uid"] != kept["metadata"]["uid"]
    assert again["metadata"]["annotations"][NC.JOB_RETRY] == "try-2"


def test_no_more_than_the_bound_run_at_once(cloud: cluster.Cluster, manager: list[yurtmanager.HostManager]) -> None:
    fleet = [f"fleet-{i}" for i in range(6)]
    add_nodes(cloud, *fleet)
    label(cloud, "true", *fleet)
    seen = 0

    def all_converted() -> bool:
        nonlocal seen
        active = [j for j in jobs_of(cloud, fleet) if not (j.get("status") or {}).get("succeeded")]
        assert len(active) <= BOUND, [j["metadata"]["name"] for j in active]
        seen = max(seen, len(active))
        return all(reason(cloud, n) == NC.CONVERTED for n in fleet)

    wait_for("the fleet converted", all_converted, timeout=120)
    assert seen >= 1


def test_a_restarted_manager_goes_on_without_redoing_finished_nodes(
    cloud: cluster.Cluster, manager: list[yurtmanager.HostManager], config: Path, tmp_path: Path
) -> None:
    wave = [f"wave-{i}" for i in range(5)]
    add_nodes(cloud, *wave)
    label(cloud, "true", *wave)
    wait_for(
        "some converted, some not yet",
        lambda: 0 < sum(reason(cloud, n) == NC.CONVERTED for n in wave) < len(wave),
        timeout=60,
    )
    manager[0].stop()
    done = [n for n in wave if reason(cloud, n) == NC.CONVERTED]
    manager[0] = start(config, tmp_path, "conv-b")
    wait_for("the wave converted", lambda: all(reason(cloud, n) == NC.CONVERTED for n in wave), timeout=120)
    for n in done:
        assert events(cloud, n, NC.CONVERTING) == 1, n  # not started again
    for n in wave:
        assert events(cloud, n, NC.CONVERTED) == 1, n


def test_joining_an_edge_pool_converts_a_node_and_leaving_it_reverts_it(
    cloud: cluster.Cluster, manager: list[yurtmanager.HostManager]
) -> None:
    cloud.kubectl.apply([components.nodepool_crd()])
    cloud.kubectl.run("wait", "--for=condition=Established", f"crd/{components.NODEPOOL_CRD}", "--timeout=60s")
    cloud.kubectl.apply([nodepools.nodepool("shop", "Edge"), nodepools.nodepool("hall", "Cloud")])
    add_nodes(cloud, "shop-1", "hall-1")
    cloud.kubectl.run("label", "node", "shop-1", f"{nodepool.POOL_LABEL}=shop")
    cloud.kubectl.run("label", "node", "hall-1", f"{nodepool.POOL_LABEL}=hall")
    wait_for("shop-1 converted", lambda: reason(cloud, "shop-1") == NC.CONVERTED, timeout=90)
    cloud.kubectl.run("label", "node", "shop-1", f"{nodepool.POOL_LABEL}-")
    wait_for("shop-1 reverted", lambda: reason(cloud, "shop-1") == NC.REVERTED, timeout=60)
    assert conversion(cloud, "hall-1") == {}  # a Cloud pool's node is not an edge node
