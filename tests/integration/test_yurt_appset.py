"""YurtAppSet against the real kube-apiserver: yurt-manager (its console script, bound only to the ClusterRole
`yurtctl convert` installs for it) makes one Deployment per NodePool, the real controller-manager and
scheduler run them, and kwok runs their pods on simulated nodes labelled with their pool.

The tests run in order on one cluster and one YurtAppSet `web`: tweaks per pool, a tweak that changes only its
pool, a template change that rolls every pool, `yurtctl get pools`, a pool that stops matching, a pool that is
deleted, a template yurt-manager refuses, and the attacks (a patch that would move a Deployment to another
namespace, a Deployment that only carries the label)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from converter import appset, components, names
from testenv import cluster, kwokjobs, nodepools, yurtmanager
from testenv.kubectl import wait_for

Obj = dict[str, Any]
NS = "shop"
POOLS = {"hangzhou": "east", "shanghai": "east", "beijing": "north"}


def pool_node(name: str, pool: str, *, autonomous: bool) -> Obj:
    obj = kwokjobs.node(name)
    obj["metadata"]["labels"] |= {appset.NODEPOOL_LABEL: pool, names.EDGE_WORKER_LABEL: "true"}
    if autonomous:
        obj["metadata"]["annotations"][names.AUTONOMY_ANNOTATION] = "true"
    return obj


LOST: Obj = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "lost",
        "labels": {appset.NODEPOOL_LABEL: "beijing", names.EDGE_WORKER_LABEL: "true"},
        "annotations": {names.AUTONOMY_ANNOTATION: "true"},
    },
    "spec": {"taints": [{"key": "example.com/no-kubelet", "effect": "NoSchedule"}]},
}
"""A node nothing renews (no kubelet, not kwok's): from the cloud, exactly what a cut-off yurthub's node looks
like; the taint keeps the pool's pods off it."""


def web(image: str = "web:1", hangzhou_replicas: int = 2, version: str = "1") -> Obj:
    return {
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "nodepoolSelector": {"matchLabels": {"region": "east"}},
            "pools": ["beijing", "nowhere"],
            "workload": {
                "workloadTemplate": {
                    "deploymentTemplate": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "replicas": 1,
                            "selector": {"matchLabels": {"app": "web"}},
                            "template": {
                                "metadata": {"labels": {"app": "web"}, "annotations": {"version": version}},
                                "spec": {
                                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                                    "containers": [{"name": "web", "image": image}],
                                },
                            },
                        },
                    }
                },
                "workloadTweaks": [
                    {
                        "pools": ["hangzhou"],
                        "tweaks": {
                            "replicas": hangzhou_replicas,
                            "containerImages": [{"name": "web", "targetImage": "web:hangzhou"}],
                        },
                    },
                    {
                        "nodepoolSelector": {"matchLabels": {"region": "north"}},
                        "tweaks": {
                            "patches": [
                                {
                                    "path": "/spec/template/spec/containers/0/env",
                                    "operation": "add",
                                    "value": [{"name": "POOL", "value": "{{nodepool-name}}"}],
                                }
                            ]
                        },
                    },
                ],
            },
        },
    }


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        assert c.plane is not None
        jobs = kwokjobs.start(cluster.binaries(), c.plane.admin_kubeconfig, c.directory / "cloud", c.group)
        try:
            c.kubectl.apply([components.nodepool_crd(), *components.appset_objects()])
            for crd in ("nodepools.apps.openyurt.io", "yurtappsets.apps.openyurt.io"):
                c.kubectl.run("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
            c.kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
            c.kubectl.apply(nodepools.nodepool(name, region=region) for name, region in POOLS.items())
            c.kubectl.apply(
                pool_node(f"{pool}-{i}", pool, autonomous=pool != "beijing") for pool in POOLS for i in range(2)
            )
            c.kubectl.apply([kwokjobs.node("outsider"), LOST])
            yield c
        finally:
            jobs.stop()


@pytest.fixture(scope="module")
def manager(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[yurtmanager.HostManager]:
    assert cloud.plane is not None
    directory = tmp_path_factory.mktemp("manager")
    config = yurtmanager.own_kubeconfig(cloud.plane, directory)
    started = yurtmanager.start(config, directory, "appset-a", "--resync-seconds=1", "--leader-elect-lease-duration=6")
    yield started
    started.stop()
    logging.getLogger(__name__).info("yurt-manager log:\n%s", started.log.read_text()[-20000:])


def deployments(cloud: cluster.Cluster) -> dict[str, Obj]:
    """The Deployments `web` owns, by pool."""
    items = cloud.kubectl.get("deployments", "-n", NS, "-l", f"{appset.REF_LABEL}=web")["items"]
    return {
        d["metadata"]["labels"][appset.POOL_NAME_LABEL]: d
        for d in items
        if any(r.get("kind") == "YurtAppSet" for r in d["metadata"].get("ownerReferences") or [])
    }


def status(cloud: cluster.Cluster, name: str = "web") -> Obj:
    return dict(cloud.kubectl.get("yurtappset", "-n", NS, name).get("status") or {})


def settled(cloud: cluster.Cluster, total: int) -> bool:
    """Every pool's workload ready and on its current revision, and the status says so for this spec."""
    obj = cloud.kubectl.get("yurtappset", "-n", NS, "web")
    st = obj.get("status") or {}
    return (
        st.get("observedGeneration") == obj["metadata"]["generation"]
        and st.get("totalWorkloads") == total
        and st.get("readyWorkloads") == total
        and st.get("updatedWorkloads") == total
        and len(deployments(cloud)) == total
    )


def pods_by_pool(cloud: cluster.Cluster) -> dict[str, list[Obj]]:
    out: dict[str, list[Obj]] = {}
    for p in cloud.kubectl.get("pods", "-n", NS, "-l", "app=web")["items"]:
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running":
            out.setdefault(p["metadata"]["labels"][appset.POOL_NAME_LABEL], []).append(p)
    return out


def test_a_yurtappset_makes_one_deployment_per_selected_pool_with_its_tweaks(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    cloud.kubectl.apply([web()])
    wait_for("a ready Deployment in each of the 3 pools", lambda: settled(cloud, 3), timeout=90)
    made = deployments(cloud)
    assert sorted(made) == ["beijing", "hangzhou", "shanghai"]
    raw = cloud.kubectl.get("deployments", "-n", NS, "-l", f"{appset.REF_LABEL}=web")["items"]
    assert len(raw) == 3  # generateName made exactly one per pool, not one per pass
    for pool, d in made.items():
        assert d["metadata"]["name"].startswith(f"web-{pool}-")
        assert d["metadata"]["annotations"][appset.REF_POOL_ANNOTATION] == pool
        assert d["metadata"]["ownerReferences"][0]["kind"] == "YurtAppSet"
        assert d["spec"]["template"]["spec"]["nodeSelector"] == {appset.NODEPOOL_LABEL: pool}
    containers = {pool: d["spec"]["template"]["spec"]["containers"][0] for pool, d in made.items()}
    assert made["hangzhou"]["spec"]["replicas"] == 2 and made["shanghai"]["spec"]["replicas"] == 1
    assert containers["hangzhou"]["image"] == "web:hangzhou" and containers["shanghai"]["image"] == "web:1"
    assert containers["beijing"].get("env") == [{"name": "POOL", "value": "beijing"}]
    assert "env" not in containers["shanghai"]
    wait_for("4 pods running", lambda: sum(len(v) for v in pods_by_pool(cloud).values()) == 4, timeout=60)
    pods = pods_by_pool(cloud)
    for pool, running in pods.items():
        assert {p["spec"]["nodeName"].rsplit("-", 1)[0] for p in running} == {pool}
    st = status(cloud)
    assert {(p["pool"], p["ready"], p["updated"]) for p in st["poolStatus"]} == {
        ("beijing", True, True),
        ("hangzhou", True, True),
        ("shanghai", True, True),
    }
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions == dict.fromkeys(["PoolFound", "AppDispatched", "AppDeleted", "AppUpdated", "AppReady"], "True")
    described = cloud.kubectl.run("describe", "yurtappset", "-n", NS, "web")
    for pool in POOLS:  # each Deployment written is an Event on the YurtAppSet
        assert re.search(
            rf"Normal\s+WorkloadCreated\s+.*Deployment web-{pool}-\S+ of pool {pool} created", described
        ), described
    # the pool pass and the YurtAppSets read one NodePool informer: one list, then one watch
    assert 'yurt_manager_lists_total{resource="nodepools"} 1.0' in manager.get("/metrics")[1]


def test_a_tweak_changes_only_its_pools_deployment(cloud: cluster.Cluster, manager: yurtmanager.HostManager) -> None:
    before = deployments(cloud)
    cloud.kubectl.apply([web(hangzhou_replicas=3)])
    wait_for(
        "hangzhou at 3 replicas, all settled",
        lambda: deployments(cloud)["hangzhou"]["spec"]["replicas"] == 3 and settled(cloud, 3),
        timeout=90,
    )
    after = deployments(cloud)
    assert after["hangzhou"]["metadata"]["generation"] > before["hangzhou"]["metadata"]["generation"]
    for pool in ("shanghai", "beijing"):
        assert after[pool]["metadata"]["generation"] == before[pool]["metadata"]["generation"], pool
        assert after[pool]["metadata"]["labels"] == before[pool]["metadata"]["labels"], pool


def test_a_template_change_rolls_every_pool(cloud: cluster.Cluster, manager: yurtmanager.HostManager) -> None:
    """A change to the template rolls every pool whose Deployment it changes: the image change alone would
    not touch hangzhou (its tweak sets its own image), the annotation change reaches every pool."""
    before = deployments(cloud)
    cloud.kubectl.apply([web(image="web:2", hangzhou_replicas=3, version="2")])

    def rolled() -> bool:
        now = deployments(cloud)
        return settled(cloud, 3) and all(
            now[p]["metadata"]["labels"][appset.REVISION_LABEL]
            != before[p]["metadata"]["labels"][appset.REVISION_LABEL]
            for p in before
        )

    wait_for("every pool rolled to the new template", rolled, timeout=120)
    images = {p: d["spec"]["template"]["spec"]["containers"][0]["image"] for p, d in deployments(cloud).items()}
    assert images == {"hangzhou": "web:hangzhou", "shanghai": "web:2", "beijing": "web:2"}
    wait_for(
        "only new pods running",
        lambda: (
            {p["spec"]["containers"][0]["image"] for ps in pods_by_pool(cloud).values() for p in ps}
            == {"web:hangzhou", "web:2"}
            and sum(len(v) for v in pods_by_pool(cloud).values()) == 5
        ),
        timeout=90,
    )


def yurtctl(cloud: cluster.Cluster, *args: str) -> str:
    assert cloud.plane is not None
    binary = shutil.which("yurtctl", path=os.path.dirname(sys.executable))
    assert binary is not None
    proc = subprocess.run(
        [binary, f"--kubeconfig={cloud.plane.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def test_yurtctl_get_pools_shows_each_site_and_its_yurtappsets(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    rows = {line.split()[0]: line.split() for line in yurtctl(cloud, "get", "pools").splitlines()[1:]}
    assert rows["hangzhou"] == ["hangzhou", "Edge", "2", "2", "0", "2", "0", "shop/web:ready"]
    assert rows["beijing"] == ["beijing", "Edge", "3", "2", "1", "1", "1", "shop/web:ready"]  # `lost` is offline
    assert rows["<none>"][:3] == ["<none>", "-", "1"]  # the node in no pool
    lines = yurtctl(cloud, "get", "yurtappsets", "-n", NS).splitlines()
    assert lines[1].split()[:5] == [NS, "web", "3", "3", "3"] and lines[1].split()[-1] == "-"


def test_a_pool_that_stops_matching_loses_its_deployment(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    cloud.kubectl.run("label", "nodepool", "shanghai", "region=west", "--overwrite")
    wait_for(
        "shanghai's Deployment gone", lambda: settled(cloud, 2) and "shanghai" not in deployments(cloud), timeout=60
    )
    assert sorted(deployments(cloud)) == ["beijing", "hangzhou"]


def test_a_deleted_pool_loses_its_deployment(cloud: cluster.Cluster, manager: yurtmanager.HostManager) -> None:
    cloud.kubectl.run("delete", "nodepool", "beijing")
    wait_for("beijing's Deployment gone", lambda: settled(cloud, 1) and "beijing" not in deployments(cloud), timeout=60)
    assert sorted(deployments(cloud)) == ["hangzhou"]
    assert [p["pool"] for p in status(cloud)["poolStatus"]] == ["hangzhou"]


def test_a_statefulset_template_is_refused_with_a_condition(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    db = web()
    db["metadata"]["name"] = "db"
    db["spec"]["workload"]["workloadTemplate"] = {"statefulSetTemplate": {"spec": {"serviceName": "db"}}}
    cloud.kubectl.apply([db])

    def refused() -> bool:
        conditions = {c["type"]: c for c in status(cloud, "db").get("conditions") or []}
        return bool(conditions.get("AppDispatched", {}).get("reason") == "UnsupportedWorkload")

    wait_for("db refused", refused, timeout=60)
    described = cloud.kubectl.run("describe", "yurtappset", "-n", NS, "db")
    assert re.search(r"Warning\s+UnsupportedWorkload\s+.*statefulSetTemplate is not supported", described), described
    assert len(re.findall(r"Warning\s+UnsupportedWorkload", described)) == 1, "told once, not on every pass"
    assert cloud.kubectl.get("deployments,statefulsets", "-n", NS, "-l", f"{appset.REF_LABEL}=db")["items"] == []


def test_attack_a_patch_cannot_put_a_deployment_in_another_namespace(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    evil = web()
    evil["metadata"]["name"] = "evil"
    evil["spec"]["workload"]["workloadTweaks"] = [
        {
            "pools": ["hangzhou"],
            "tweaks": {"patches": [{"path": "/metadata/namespace", "operation": "replace", "value": "kube-system"}]},
        }
    ]
    cloud.kubectl.apply([evil])

    def reported() -> bool:
        conditions = {c["type"]: c for c in status(cloud, "evil").get("conditions") or []}
        return bool(conditions.get("AppDispatched", {}).get("reason") == "CreateWorkloadError")

    wait_for("the patch refused in evil's status", reported, timeout=60)
    assert "may not change" in json.dumps(status(cloud, "evil")["conditions"])
    leaked = cloud.kubectl.get("deployments", "-A", "-l", f"{appset.REF_LABEL}=evil")["items"]
    assert {d["metadata"]["namespace"] for d in leaked} <= {NS}
    assert "hangzhou" not in {d["metadata"]["labels"][appset.POOL_NAME_LABEL] for d in leaked}


def test_attack_a_deployment_that_only_carries_the_label_is_left_alone(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    """A Deployment someone else labelled `ref-yurtappset=web` (no ownerReference to web) is neither deleted
    nor counted: yurt-manager only deletes what it owns."""
    squatter = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "squatter",
            "namespace": NS,
            "labels": {appset.REF_LABEL: "web", appset.POOL_NAME_LABEL: "shanghai"},
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "squatter"}},
            "template": {
                "metadata": {"labels": {"app": "squatter"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    cloud.kubectl.apply([squatter])
    cloud.kubectl.apply([web(image="web:3", hangzhou_replicas=3, version="3")])  # a pass surely runs after it
    wait_for("web settled on the new template", lambda: settled(cloud, 1), timeout=90)
    assert cloud.kubectl.get("deployment", "-n", NS, "squatter")["metadata"]["name"] == "squatter"
    assert status(cloud)["totalWorkloads"] == 1
