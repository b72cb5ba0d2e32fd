"""NodePools against the real kube-apiserver: the CRD from the package, OpenYurt's manifests of three versions,
and yurt-manager (its console script, with only the ClusterRole `yurtctl convert` installs for it) keeping
kwok nodes' pool attributes and the pools' status while nodes join, move and leave."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import components, nodepool
from testenv import cluster, kubeconfig, yurtmanager
from testenv.kubectl import Kubectl, KubectlError, wait_for

KWOK = 5
N = [f"kwok-{i}" for i in range(KWOK)]


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False, kwok_nodes=KWOK)) as c:
        c.kubectl.apply(components.nodepool_objects())
        c.kubectl.run("wait", "--for=condition=Established", f"crd/{components.NODEPOOL_CRD}", "--timeout=60s")
        yield c


@pytest.fixture(scope="module")
def manager(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[yurtmanager.HostManager]:
    assert cloud.plane is not None
    directory: Path = tmp_path_factory.mktemp("manager")
    config = yurtmanager.own_kubeconfig(cloud.plane, directory)
    started = yurtmanager.start(config, directory, "pools", "--resync-seconds=0.5", "--no-leader-elect")
    yield started
    started.stop()
    logging.getLogger(__name__).info("yurt-manager log:\n%s", started.log.read_text())


# OpenYurt's own manifests, as an operator has them (v1beta2 from its docs, v1beta1 and v1alpha1 older ones).
SITE_A = """
apiVersion: apps.openyurt.io/v1beta2
kind: NodePool
metadata:
  name: site-a
spec:
  type: Edge
  hostNetwork: false
  interConnectivity: true
  leaderElectionStrategy: random
  enableLeaderElection: false
  leaderReplicas: 1
  poolScopeMetadata:
    - {group: "", version: v1, resource: services}
    - {group: discovery.k8s.io, version: v1, resource: endpointslices}
  labels:
    site: a
    apps.openyurt.io/example: test-a
  annotations:
    site.example.com/owner: team-a
  taints:
    - {key: site, value: a, effect: NoSchedule}
"""
SITE_B = """
apiVersion: apps.openyurt.io/v1beta1
kind: NodePool
metadata:
  name: site-b
spec:
  type: Edge
  hostNetwork: false
  labels:
    site: b
  taints:
    - {key: site, value: b, effect: NoSchedule}
"""
LEGACY = """
apiVersion: apps.openyurt.io/v1alpha1
kind: NodePool
metadata:
  name: legacy
spec:
  type: Edge
  selector:
    matchLabels:
      apps.openyurt.io/nodepool: legacy
  labels:
    site: legacy
"""
CLOUD = """
apiVersion: apps.openyurt.io/v1beta2
kind: NodePool
metadata:
  name: hall
spec:
  type: Cloud
"""


def apply_yaml(cloud: cluster.Cluster, text: str) -> None:
    cloud.kubectl.run("apply", "-f", "-", stdin=text)


def pool(cloud: cluster.Cluster, name: str, version: str = nodepool.VERSION) -> dict[str, Any]:
    got: dict[str, Any] = cloud.kubectl.get(f"nodepools.{version}.apps.openyurt.io", name)
    return got


def node(cloud: cluster.Cluster, name: str) -> dict[str, Any]:
    got: dict[str, Any] = cloud.kubectl.get("node", name)
    return got


def pool_taints(n: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (t["key"], t.get("value", ""), t["effect"]) for t in n["spec"].get("taints") or [] if t["key"] == "site"
    )


def join(cloud: cluster.Cluster, name: str, pool_name: str | None) -> None:
    value = f"{nodepool.POOL_LABEL}={pool_name}" if pool_name else f"{nodepool.POOL_LABEL}-"
    cloud.kubectl.run("label", "node", name, value, "--overwrite")


def status_of(cloud: cluster.Cluster, name: str) -> tuple[list[str], int, int]:
    st = pool(cloud, name).get("status") or {}
    return st.get("nodes"), st.get("readyNodeNum"), st.get("unreadyNodeNum")


def test_openyurt_manifests_of_every_served_version_apply_unchanged(cloud: cluster.Cluster) -> None:
    for text in (SITE_A, SITE_B, LEGACY, CLOUD):
        apply_yaml(cloud, text)
    a = pool(cloud, "site-a")
    assert a["spec"]["interConnectivity"] is True and a["spec"]["poolScopeMetadata"][1]["resource"] == "endpointslices"
    assert a["spec"]["taints"] == [{"key": "site", "value": "a", "effect": "NoSchedule"}]
    b = pool(cloud, "site-b")  # written as v1beta1, read as v1beta2: nothing lost
    assert b["spec"] == {
        "type": "Edge",
        "hostNetwork": False,
        "labels": {"site": "b"},
        "taints": [{"key": "site", "value": "b", "effect": "NoSchedule"}],
    }
    assert pool(cloud, "site-b", "v1beta1")["spec"]["labels"] == {"site": "b"}
    legacy = pool(cloud, "legacy")  # v1alpha1's selector has no v1beta2 field: not kept (CRD comment)
    assert legacy["spec"] == {"type": "Edge", "labels": {"site": "legacy"}}
    assert pool(cloud, "site-a", "v1beta1")["spec"]["labels"]["site"] == "a"
    short = cloud.kubectl.run("get", "np", "-o", "name")
    assert "nodepool.apps.openyurt.io/site-a" in short
    with pytest.raises(
        KubectlError, match="Unsupported value"
    ):  # the type is Edge or Cloud, as OpenYurt's webhook says
        apply_yaml(cloud, CLOUD.replace("name: hall", "name: fog").replace("Cloud", "Fog"))


def test_nodes_joining_moving_and_leaving_carry_exactly_their_pools_attributes(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    apply_yaml(cloud, SITE_A)
    apply_yaml(cloud, SITE_B)
    cloud.kubectl.run("label", "node", N[0], "mine=kept")
    join(cloud, N[0], "site-a")
    join(cloud, N[1], "site-a")
    join(cloud, N[2], "site-b")
    wait_for("site-a's status", lambda: status_of(cloud, "site-a") == ([N[0], N[1]], 2, 0), timeout=60)
    wait_for("site-b's status", lambda: status_of(cloud, "site-b") == ([N[2]], 1, 0), timeout=60)
    n0 = node(cloud, N[0])
    assert n0["metadata"]["labels"]["site"] == "a" and n0["metadata"]["labels"]["mine"] == "kept"
    assert n0["metadata"]["annotations"]["site.example.com/owner"] == "team-a"
    assert pool_taints(n0) == [("site", "a", "NoSchedule")]
    assert json.loads(n0["metadata"]["annotations"][nodepool.PREVIOUS])["labels"]["site"] == "a"
    assert any(t["key"] == "kwok.x-k8s.io/node" for t in n0["spec"]["taints"])  # kwok's own taint stays

    join(cloud, N[1], "site-b")  # moves: a label changed in place is leave + join
    wait_for(
        "the moved node to carry site-b's",
        lambda: pool_taints(node(cloud, N[1])) == [("site", "b", "NoSchedule")],
        timeout=60,
    )
    moved = node(cloud, N[1])["metadata"]
    assert moved["labels"]["site"] == "b" and "apps.openyurt.io/example" not in moved["labels"]
    assert "site.example.com/owner" not in moved["annotations"]
    wait_for(
        "both pools' status",
        lambda: status_of(cloud, "site-a") == ([N[0]], 1, 0) and status_of(cloud, "site-b") == ([N[1], N[2]], 2, 0),
        timeout=60,
    )

    cloud.kubectl.run(
        "patch",
        "nodepool",
        "site-a",
        "--type=merge",
        "-p",
        json.dumps(
            {
                "spec": {
                    "labels": {"site": "a2", "apps.openyurt.io/example": None},
                    "taints": [{"key": "site", "value": "a", "effect": "NoExecute"}],
                }
            }
        ),
    )
    wait_for(
        "the spec change on the member", lambda: node(cloud, N[0])["metadata"]["labels"].get("site") == "a2", timeout=60
    )
    wait_for("the taint swapped", lambda: pool_taints(node(cloud, N[0])) == [("site", "a", "NoExecute")], timeout=60)
    assert "apps.openyurt.io/example" not in node(cloud, N[0])["metadata"]["labels"]

    join(cloud, N[0], None)  # leaves: exactly what the pool put there comes off
    wait_for(
        "the departed node to be clean",
        lambda: nodepool.PREVIOUS not in (node(cloud, N[0])["metadata"].get("annotations") or {}),
        timeout=60,
    )
    left = node(cloud, N[0])
    assert "site" not in left["metadata"]["labels"] and left["metadata"]["labels"]["mine"] == "kept"
    assert pool_taints(left) == [] and "site.example.com/owner" not in left["metadata"]["annotations"]
    wait_for("site-a empty", lambda: status_of(cloud, "site-a") == ([], 0, 0), timeout=60)
    metrics = manager.get("/metrics")[1]
    assert 'yurt_manager_nodepool_writes_total{what="error"}' not in metrics, metrics  # its RBAC sufficed


def test_a_node_contradicting_its_pools_type_is_refused_with_a_condition_and_an_event(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    apply_yaml(cloud, CLOUD)
    cloud.kubectl.run("label", "node", N[3], "openyurt.io/is-edge-worker=true", "--overwrite")
    join(cloud, N[3], "hall")
    join(cloud, N[4], "hall")

    def condition() -> dict[str, Any]:
        conds = (pool(cloud, "hall").get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == nodepool.CONFORM), {})

    wait_for("the TypeMismatch condition", lambda: condition().get("reason") == "TypeMismatch", timeout=60)
    assert condition()["status"] == "False" and N[3] in condition()["message"]
    assert status_of(cloud, "hall") == ([N[4]], 1, 0)
    events = cloud.kubectl.get("events", "-n", "default", "--field-selector", f"involvedObject.name={N[3]}")["items"]
    assert [e["reason"] for e in events if e["reason"] == "TypeMismatch"] == ["TypeMismatch"]
    cloud.kubectl.run("label", "node", N[3], "openyurt.io/is-edge-worker=false", "--overwrite")
    wait_for("the condition to clear", lambda: condition().get("status") == "True", timeout=60)
    assert status_of(cloud, "hall") == ([N[3], N[4]], 2, 0)
    join(cloud, N[4], "nowhere")
    wait_for(
        "a PoolNotFound event",
        lambda: any(
            e["reason"] == "PoolNotFound"
            for e in cloud.kubectl.get("events", "-n", "default", "--field-selector", f"involvedObject.name={N[4]}")[
                "items"
            ]
        ),
        timeout=60,
    )


def test_a_node_gets_its_pool_by_name_and_can_neither_enumerate_pools_nor_rewrite_members(
    cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The attack: a compromised node reading every site's pool and members, or forging a pool's members
    (servicetopology on other nodes trusts `status.nodes`) or its attributes (they land on every member)."""
    assert cloud.plane is not None
    apply_yaml(cloud, SITE_A)
    directory: Path = tmp_path_factory.mktemp("node-identity")
    pair = cloud.plane.ca.issue(f"system:node:{N[2]}", organizations=("system:nodes",), client=True)
    config = kubeconfig.write(
        directory / "node.kubeconfig",
        server=cloud.plane.server,
        ca_pem=cloud.plane.ca.pair.cert_pem,
        user=f"system:node:{N[2]}",
        cert_pem=pair.cert_pem,
        key_pem=pair.key_pem,
    )
    as_node = Kubectl(cloud.kubectl.binary, config)
    assert as_node.get(f"nodepools.{nodepool.VERSION}.apps.openyurt.io", "site-a")["metadata"]["name"] == "site-a"
    forged = json.dumps({"status": {"nodes": [N[2]]}})
    for attempt in (
        ("get", "nodepools"),
        ("get", "nodepools", "--watch-only", "--request-timeout=5s"),
        ("patch", "nodepool", "site-a", "--subresource=status", "--type=merge", "-p", forged),
        ("patch", "nodepool", "site-a", "--type=merge", "-p", json.dumps({"spec": {"labels": {"x": "y"}}})),
        ("delete", "nodepool", "site-a"),
    ):
        with pytest.raises(KubectlError, match=r"(?i)forbidden"):
            as_node.run(*attempt)
    assert pool(cloud, "site-a")["spec"]["labels"].get("x") is None


def test_a_node_cannot_move_itself_into_a_pool_but_an_admin_can(
    cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The attack: a compromised node labelling itself into another site's pool (it would get that pool's
    workloads, pinned by the label, and a place in the members other nodes' servicetopology trusts)."""
    assert cloud.plane is not None
    name = N[2]
    pair = cloud.plane.ca.issue(f"system:node:{name}", organizations=("system:nodes",), client=True)
    config = kubeconfig.write(
        tmp_path_factory.mktemp("self-label") / "node.kubeconfig",
        server=cloud.plane.server,
        ca_pem=cloud.plane.ca.pair.cert_pem,
        user=f"system:node:{name}",
        cert_pem=pair.cert_pem,
        key_pem=pair.key_pem,
    )
    as_node = Kubectl(cloud.kubectl.binary, config)
    before = node(cloud, name)["metadata"]["labels"].get(nodepool.POOL_LABEL)

    def refused() -> bool:  # a new policy takes a moment to be enforced; an early success is undone
        try:
            as_node.run("label", "node", name, f"{nodepool.POOL_LABEL}=site-a", "--overwrite")
        except KubectlError as exc:
            return "cannot change its own NodePool membership" in str(exc)
        join(cloud, name, before)
        return False

    wait_for("the membership policy to be enforced", refused, timeout=30)
    for change in (f"{nodepool.POOL_LABEL}=site-a", f"{nodepool.POOL_LABEL}-"):
        with pytest.raises(KubectlError, match="cannot change its own NodePool membership"):
            as_node.run("label", "node", name, change, "--overwrite")
    assert node(cloud, name)["metadata"]["labels"].get(nodepool.POOL_LABEL) == before
    as_node.run("label", "node", name, "harmless=yes", "--overwrite")  # its other labels: as NodeRestriction says
    join(cloud, name, "site-a")  # the administrator
    assert node(cloud, name)["metadata"]["labels"][nodepool.POOL_LABEL] == "site-a"


def test_a_pool_with_members_cannot_be_deleted_until_they_leave(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    """Deleting a pool whose nodes still carry its label would strand them (their workloads are pinned by the
    label, their topology is the pool's): refused, naming the members, by everyone, the administrator too."""
    name = N[2]
    apply_yaml(cloud, SITE_A)
    join(cloud, name, "site-a")
    wait_for("the member in site-a's status", lambda: name in (status_of(cloud, "site-a")[0] or []), timeout=60)

    def refused() -> bool:  # a new policy takes a moment to be enforced; an early success is undone
        try:
            cloud.kubectl.run("delete", "nodepool", "site-a", "--wait=false")
        except KubectlError as exc:
            return f"NodePool site-a still has member nodes ({name})" in str(exc)
        apply_yaml(cloud, SITE_A)
        wait_for("the member back in site-a", lambda: name in (status_of(cloud, "site-a")[0] or []), timeout=60)
        return False

    wait_for("the in-use policy to be enforced", refused, timeout=60)
    with pytest.raises(KubectlError, match=r"(?s)still has member nodes.*remove their label apps.openyurt.io/nodepool"):
        cloud.kubectl.run("delete", f"nodepools.v1beta1.{nodepool.GROUP}", "site-a")  # any served version
    assert pool(cloud, "site-a")["metadata"]["name"] == "site-a"
    join(cloud, name, None)
    wait_for("site-a empty", lambda: status_of(cloud, "site-a")[0] == [], timeout=60)
    cloud.kubectl.run("delete", "nodepool", "site-a")
    with pytest.raises(KubectlError, match="NotFound"):
        pool(cloud, "site-a")


def test_removing_the_crd_as_revert_does_is_not_held_up_by_pools_with_members(
    cloud: cluster.Cluster, manager: yurtmanager.HostManager
) -> None:
    """The in-use policy guards deleting one pool; `yurtctl revert` deletes the CRD, and with it every pool,
    members or not (the apiserver deletes a CRD's objects without admission)."""
    apply_yaml(cloud, SITE_A)
    join(cloud, N[2], "site-a")
    wait_for("a member in site-a's status", lambda: N[2] in (status_of(cloud, "site-a")[0] or []), timeout=60)
    with pytest.raises(KubectlError, match="still has member nodes"):
        cloud.kubectl.run("delete", "nodepool", "site-a")
    cloud.kubectl.run("delete", "crd", components.NODEPOOL_CRD, "--wait=true", timeout=120)
    assert components.NODEPOOL_CRD not in cloud.kubectl.run("get", "crd", "-o", "name")
