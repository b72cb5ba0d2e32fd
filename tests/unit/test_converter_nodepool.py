"""The NodePool core as tables: join, leave, move, spec change, taints by key and effect, conflicts."""

from __future__ import annotations

import io
import json
from typing import Any

import prometheus_client as prom
import pytest

from converter import access, components, controller, nodepool, plan, poolsync, runner

NOW = "2026-11-29T08:00:00Z"


def pool(name: str, kind: str = "Edge", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps.openyurt.io/v1beta2",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {"type": kind, **spec},
    }


def node(
    name: str, pool_name: str = "", *, edge: str | None = None, ready: bool = True, **extra: Any
) -> dict[str, Any]:
    labels = dict(extra.get("labels") or {})
    if pool_name:
        labels[nodepool.POOL_LABEL] = pool_name
    if edge is not None:
        labels[nodepool.EDGE_WORKER_LABEL] = edge
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": dict(extra.get("annotations") or {}),
            "resourceVersion": "7",
        },
        "spec": {"taints": list(extra.get("taints") or [])},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def apply(n: dict[str, Any], pools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The node after its patch, then checked to need no further one (the patch converges in one step)."""
    patch = nodepool.node_patch(n, pools)
    out = access.merge_patch(n, patch) if patch else n
    assert nodepool.node_patch(out, pools) is None
    return dict(out)


SITE_A = pool(
    "site-a",
    labels={"site": "a", "zone": "north"},
    annotations={"owner": "ops-a"},
    taints=[{"key": "site", "value": "a", "effect": "NoSchedule"}],
)
SITE_B = pool("site-b", labels={"site": "b"}, taints=[{"key": "site", "value": "b", "effect": "NoSchedule"}])
POOLS = {"site-a": SITE_A, "site-b": SITE_B}


def test_a_node_joining_gets_the_pools_attributes_and_a_record_of_them() -> None:
    out = apply(node("n1", "site-a"), POOLS)
    assert out["metadata"]["labels"]["site"] == "a" and out["metadata"]["labels"]["zone"] == "north"
    assert out["metadata"]["annotations"]["owner"] == "ops-a"
    assert out["spec"]["taints"] == [{"key": "site", "value": "a", "effect": "NoSchedule"}]
    recorded = json.loads(out["metadata"]["annotations"][nodepool.PREVIOUS])
    assert recorded == {
        "labels": {"site": "a", "zone": "north"},
        "annotations": {"owner": "ops-a"},
        "taints": [{"key": "site", "value": "a", "effect": "NoSchedule"}],
    }


def test_a_node_leaving_loses_exactly_what_the_pool_put_there() -> None:
    own = {"key": "gpu", "value": "yes", "effect": "NoSchedule"}
    joined = apply(node("n1", "site-a", labels={"mine": "1"}, taints=[own]), POOLS)
    joined["metadata"]["labels"]["zone"] = "changed-by-someone"  # no longer the pool's value: theirs now
    del joined["metadata"]["labels"][nodepool.POOL_LABEL]
    left = apply(joined, POOLS)
    labels = left["metadata"]["labels"]
    assert labels == {"mine": "1", "zone": "changed-by-someone"}
    assert "owner" not in left["metadata"]["annotations"] and nodepool.PREVIOUS not in left["metadata"]["annotations"]
    assert left["spec"]["taints"] == [own]


def test_a_node_moving_between_pools_swaps_attributes() -> None:
    joined = apply(node("n1", "site-a"), POOLS)
    joined["metadata"]["labels"][nodepool.POOL_LABEL] = "site-b"
    moved = apply(joined, POOLS)
    assert moved["metadata"]["labels"]["site"] == "b" and "zone" not in moved["metadata"]["labels"]
    assert "owner" not in moved["metadata"]["annotations"]
    assert moved["spec"]["taints"] == [{"key": "site", "value": "b", "effect": "NoSchedule"}]


def test_a_spec_change_reaches_members_and_removed_entries_come_off() -> None:
    joined = apply(node("n1", "site-a"), POOLS)
    changed = pool(
        "site-a",
        labels={"site": "a2"},
        taints=[{"key": "site", "value": "a", "effect": "NoExecute"}, {"key": "quiet", "effect": "PreferNoSchedule"}],
    )
    out = apply(joined, {"site-a": changed})
    assert out["metadata"]["labels"] == {nodepool.POOL_LABEL: "site-a", "site": "a2"}
    assert "owner" not in out["metadata"]["annotations"]
    assert sorted((t["key"], t["effect"]) for t in out["spec"]["taints"]) == [
        ("quiet", "PreferNoSchedule"),
        ("site", "NoExecute"),
    ]


@pytest.mark.parametrize(
    ("have", "want"),
    [
        # same key and effect, other value: the pool's value wins, the node's other fields stay
        (
            [{"key": "site", "value": "old", "effect": "NoSchedule", "timeAdded": "x"}],
            [{"key": "site", "value": "a", "effect": "NoSchedule", "timeAdded": "x"}],
        ),
        # same key, other effect: a different taint, both stay
        (
            [{"key": "site", "value": "z", "effect": "NoExecute"}],
            [
                {"key": "site", "value": "z", "effect": "NoExecute"},
                {"key": "site", "value": "a", "effect": "NoSchedule"},
            ],
        ),
    ],
)
def test_taints_are_matched_by_key_and_effect(have: list[dict[str, str]], want: list[dict[str, str]]) -> None:
    assert apply(node("n1", "site-a", taints=have), POOLS)["spec"]["taints"] == want


def test_a_taint_patch_carries_the_resource_version() -> None:
    patch = nodepool.node_patch(node("n1", "site-a"), POOLS)
    assert patch is not None and patch["metadata"]["resourceVersion"] == "7"
    labels_only = pool("site-a", labels={"x": "y"})
    patch = nodepool.node_patch(node("n1", "site-a"), {"site-a": labels_only})
    assert patch is not None and "resourceVersion" not in patch["metadata"]


def test_a_node_in_no_pool_is_left_alone() -> None:
    assert nodepool.node_patch(node("n1", labels={"site": "a"}), POOLS) is None


@pytest.mark.parametrize(
    ("kind", "edge", "member"),
    [
        ("Cloud", "true", False),
        ("Edge", "false", False),
        ("Cloud", "false", True),
        ("Edge", "true", True),
        ("Edge", None, True),
        ("Cloud", None, True),
    ],
)
def test_a_node_contradicting_the_pool_type_is_refused(kind: str, edge: str | None, member: bool) -> None:
    p = pool("p", kind, labels={"site": "p"})
    n = node("n1", "p", edge=edge)
    assert bool(nodepool.desired(n, {"p": p})) is member
    st = nodepool.status(p, [n], NOW)
    assert st["nodes"] == (["n1"] if member else [])
    (cond,) = st["conditions"]
    assert cond["type"] == nodepool.CONFORM
    assert (cond["status"], cond["reason"]) == (("True", "AllNodesConform") if member else ("False", "TypeMismatch"))
    if not member:
        assert "n1" in cond["message"]
        (problem,) = nodepool.problems([n], {"p": p})
        assert problem.reason == "TypeMismatch" and "n1" in problem.message


def test_a_refused_node_loses_what_it_had_from_the_pool() -> None:
    p = pool("p", "Edge", labels={"site": "p"})
    joined = apply(node("n1", "p", edge="true"), {"p": p})
    joined["metadata"]["labels"][nodepool.EDGE_WORKER_LABEL] = "false"
    assert apply(joined, {"p": p})["metadata"]["labels"] == {
        nodepool.POOL_LABEL: "p",
        nodepool.EDGE_WORKER_LABEL: "false",
    }


def test_a_label_naming_a_missing_pool_is_a_problem_and_strips_attributes() -> None:
    joined = apply(node("n1", "site-a"), POOLS)
    out = apply(joined, {"site-b": SITE_B})  # site-a deleted
    assert "site" not in out["metadata"]["labels"] and out["spec"]["taints"] == []
    (problem,) = nodepool.problems([out], {"site-b": SITE_B})
    assert (problem.node, problem.pool, problem.reason) == ("n1", "site-a", "PoolNotFound")


def test_status_counts_ready_members_sorted_and_keeps_foreign_fields() -> None:
    p = pool("site-a")
    p["status"] = {"leaderNum": 1, "conditions": [{"type": "LeaderReady", "status": "True"}]}
    nodes = [node("n3", "site-a"), node("n1", "site-a", ready=False), node("n2", "site-b"), node("n0")]
    st = nodepool.status(p, nodes, NOW)
    assert (st["nodes"], st["readyNodeNum"], st["unreadyNodeNum"], st["leaderNum"]) == (["n1", "n3"], 1, 1, 1)
    assert [c["type"] for c in st["conditions"]] == ["LeaderReady", nodepool.CONFORM]


def test_status_patch_only_when_changed_and_transition_time_kept() -> None:
    p = pool("site-a")
    p["metadata"]["resourceVersion"] = "3"
    nodes = [node("n1", "site-a")]
    patch = nodepool.status_patch(p, nodes, NOW)
    assert patch is not None and patch["metadata"]["resourceVersion"] == "3"
    p["status"] = patch["status"]
    assert nodepool.status_patch(p, nodes, "2026-11-29T09:00:00Z") is None
    nodes.append(node("n2", "site-a"))
    later = nodepool.status_patch(p, nodes, "2026-11-29T09:00:00Z")
    assert later is not None and later["status"]["conditions"][0]["lastTransitionTime"] == NOW
    assert nodepool.status_patch(pool("empty"), [], NOW) is not None  # a new pool gets its zeros once


def test_convert_installs_the_crd_and_the_nodes_read_access_and_revert_removes_them() -> None:
    opts = plan.Options(cloud_nodes=("cloud-1",))
    nodes = [node("cloud-1"), node("edge-1")]
    p = plan.convert_plan(opts, nodes, None)
    applied = {c.what: c for c in p.before if c.verb == "apply"}
    crd = applied[f"CustomResourceDefinition {components.NODEPOOL_CRD}"]
    assert crd.path == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    assert crd.body is not None and crd.body["spec"]["group"] == "apps.openyurt.io"
    assert [v["name"] for v in crd.body["spec"]["versions"] if v["storage"]] == ["v1beta2"]
    binding = applied[f"ClusterRoleBinding {components.HUB_NODEPOOLS}"].body
    assert binding is not None and binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
    ]
    role = applied[f"ClusterRole {components.HUB_NODEPOOLS}"].body
    assert role is not None and role["rules"] == [
        {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["get"]}
    ]
    order = list(applied)
    assert order.index(f"CustomResourceDefinition {components.NODEPOOL_CRD}") < order.index(
        "Deployment kube-system/yurt-manager"
    )
    deleted = [c.what for c in plan.revert_plan(nodes, [], {"data": {}}).after if c.verb == "delete"]
    for what in (
        f"CustomResourceDefinition {components.NODEPOOL_CRD}",
        f"ClusterRole {components.HUB_NODEPOOLS}",
        f"ClusterRoleBinding {components.HUB_NODEPOOLS}",
    ):
        assert what in deleted
    assert deleted.index("Deployment kube-system/yurt-manager") < deleted.index(
        f"CustomResourceDefinition {components.NODEPOOL_CRD}"
    )


def test_revert_takes_pool_attributes_off_the_nodes_even_when_they_changed_meanwhile() -> None:
    api = access.MemoryApi()
    member = apply(node("edge-1", "site-a", labels={"mine": "1"}), POOLS)
    member["metadata"].pop("resourceVersion")
    api.create("/api/v1/nodes", member)
    api.create("/api/v1/nodes", node("edge-2", "site-a"))  # labelled, never applied: nothing to take off
    changes = plan.pool_attributes_removed(api.list("/api/v1/nodes"))
    assert [c.what for c in changes] == ["Node edge-1: NodePool attributes removed"]
    api.patch(
        "/api/v1/nodes/edge-1",
        {"spec": {"taints": [*member["spec"]["taints"], {"key": "new", "effect": "NoSchedule"}]}},
    )
    runner.apply_change(api, changes[0])  # the planned patch's resourceVersion is stale: decided again
    got = api.get("/api/v1/nodes/edge-1")
    assert got is not None
    assert got["metadata"]["labels"] == {nodepool.POOL_LABEL: "site-a", "mine": "1"}
    assert got["metadata"]["annotations"] == {}
    assert got["spec"]["taints"] == [{"key": "new", "effect": "NoSchedule"}]


def test_the_crd_ships_in_the_package_and_manager_rbac_covers_pools() -> None:
    crd = components.nodepool_crd()
    assert crd["metadata"]["name"] == components.NODEPOOL_CRD
    assert {v["name"] for v in crd["spec"]["versions"]} == {"v1beta2", "v1beta1", "v1alpha1"}
    rules = components.manager_rules()
    assert {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools/status"], "verbs": ["patch", "update"]} in rules
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]} in rules


def manager(api: access.Api, identity: str = "a") -> controller.Manager:
    settings = controller.Settings(identity=identity, resync_s=0)
    return controller.Manager(api, settings, controller.Metrics(prom.CollectorRegistry()))


def test_a_manager_pass_applies_pools_to_nodes_sets_status_and_tells_a_refusal_once() -> None:
    api = access.MemoryApi()
    api.create(nodepool.COLLECTION, SITE_A)
    api.create(nodepool.COLLECTION, pool("cloud", "Cloud"))
    for n in (
        node("n1", "site-a"),
        node("n2", "site-a", ready=False),
        node("c1", "cloud", edge="true"),
        node("x", "ghost"),
    ):
        n["metadata"].pop("resourceVersion")
        api.create(controller.NODES, n)
    m = manager(api)
    m.step()
    got = api.get("/api/v1/nodes/n1")
    assert got is not None and got["metadata"]["labels"]["site"] == "a"
    assert got["spec"]["taints"] == [{"key": "site", "value": "a", "effect": "NoSchedule"}]
    st = (api.get(f"{nodepool.COLLECTION}/site-a") or {})["status"]
    assert (st["nodes"], st["readyNodeNum"], st["unreadyNodeNum"]) == (["n1", "n2"], 1, 1)
    cloud = (api.get(f"{nodepool.COLLECTION}/cloud") or {})["status"]
    assert cloud["nodes"] == [] and cloud["conditions"][0]["reason"] == "TypeMismatch"
    told = sorted((e["involvedObject"]["name"], e["reason"]) for e in api.list(poolsync.EVENTS))
    assert told == [("c1", "TypeMismatch"), ("x", "PoolNotFound")]

    def versions() -> dict[tuple[str, ...], str]:
        return {k: v["metadata"]["resourceVersion"] for k, v in api.objects.items() if k[2] != "leases"}

    before = versions()
    m.step()  # nothing changed: nothing written, nothing told again
    assert versions() == before
    api.patch("/api/v1/nodes/x", {"metadata": {"labels": {nodepool.POOL_LABEL: None}}})
    m.step()
    api.patch("/api/v1/nodes/x", {"metadata": {"labels": {nodepool.POOL_LABEL: "ghost"}}})
    m.step()  # gone and back: told again
    assert sorted(e["reason"] for e in api.list(poolsync.EVENTS)) == ["PoolNotFound", "PoolNotFound", "TypeMismatch"]


def test_a_replica_that_lost_the_lease_writes_no_pool_change() -> None:
    api = access.MemoryApi()
    api.create(nodepool.COLLECTION, SITE_A)
    n = node("n1", "site-a")
    n["metadata"].pop("resourceVersion")
    api.create(controller.NODES, n)
    m = manager(api)
    m.leading = False  # as after a lost renewal: acting() is False
    with pytest.raises(controller.NotLeading):
        m.sync_pools({"n1": api.get("/api/v1/nodes/n1") or {}})
    assert "site" not in (api.get("/api/v1/nodes/n1") or {})["metadata"]["labels"]


def test_a_pool_cannot_set_membership_or_the_edge_worker_label_and_hostnetwork_is_labelled() -> None:
    greedy = pool(
        "p",
        hostNetwork=True,
        labels={nodepool.POOL_LABEL: "other", nodepool.EDGE_WORKER_LABEL: "false", "ok": "1"},
        annotations={nodepool.PREVIOUS: "{}"},
    )
    out = apply(node("n1", "p", edge="true"), {"p": greedy})
    assert out["metadata"]["labels"] == {
        nodepool.POOL_LABEL: "p",
        nodepool.EDGE_WORKER_LABEL: "true",
        "ok": "1",
        nodepool.HOSTNETWORK_LABEL: "true",
    }
    del out["metadata"]["labels"][nodepool.POOL_LABEL]
    assert apply(out, {"p": greedy})["metadata"]["labels"] == {nodepool.EDGE_WORKER_LABEL: "true"}


def test_convert_refuses_a_nodepool_crd_it_did_not_install_and_resumes_over_its_own() -> None:
    api = access.MemoryApi()
    api.objects[("/version", "", "", "")] = {"major": "1", "minor": "34", "gitVersion": "v1.34.0"}
    for name in ("cloud-1", "edge-1"):
        api.create("/api/v1/nodes", node(name) | {"metadata": {"name": name}})
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    api.create(crds, {"metadata": {"name": components.NODEPOOL_CRD, "labels": {"owner": "openyurt"}}})
    before = {k: dict(v) for k, v in api.objects.items()}
    out = io.StringIO()
    opts = plan.Options(cloud_nodes=("cloud-1",), node_timeout_s=0.5)
    assert runner.convert(api, opts, runner.RunSettings(identity="t", poll_s=0.1), out, dry_run=False) == 1
    assert (
        f"CustomResourceDefinition {components.NODEPOOL_CRD} exists and was not installed by yurtctl" in out.getvalue()
    )
    assert api.objects == before
    api.patch(f"{crds}/{components.NODEPOOL_CRD}", {"metadata": {"labels": dict(components.MANAGED_BY)}})
    assert plan.foreign_crds([api.get(p) for p in plan.crd_paths()]) == []  # ours (an earlier convert): fine


def test_the_membership_policy_is_installed_from_1_30_and_removed_by_revert() -> None:
    opts = plan.Options(cloud_nodes=("cloud-1",))
    nodes = [node("cloud-1"), node("edge-1")]
    kinds = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    applied = [c.body["kind"] for c in plan.convert_plan(opts, nodes, None).before if c.body and c.verb == "apply"]
    assert kinds <= set(applied)
    older = plan.convert_plan(opts, nodes, None, policies=False).before
    assert not kinds & {c.body["kind"] for c in older if c.body and c.verb == "apply"}
    deleted = [c.path for c in plan.revert_plan(nodes, [], {"data": {}}).after if c.verb == "delete"]
    for policy in (components.POOL_LABEL_POLICY, components.POOL_IN_USE_POLICY):
        assert f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{policy}" in deleted
    assert plan.minor_of({"minor": "29+"}) == 29 and plan.minor_of({}) == -1
