"""The YurtAppSet core (`converter.appset`): selection, the per-pool Deployment, tweaks, revisions, plan and
status, as pure tables."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from converter import appset, components, plan

Obj = dict[str, Any]


def pool(name: str, **labels: str) -> Obj:
    return {"apiVersion": "apps.openyurt.io/v1beta2", "kind": "NodePool", "metadata": {"name": name, "labels": labels}}


POOLS = [pool("hangzhou", region="east"), pool("beijing", region="north"), pool("shanghai", region="east")]


def yas(**spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": {"name": "web", "namespace": "shop", "uid": "uid-1", "generation": 3},
        "spec": {
            "workload": {
                "workloadTemplate": {
                    "deploymentTemplate": {
                        "metadata": {"labels": {"app": "web"}, "annotations": {"team": "a"}},
                        "spec": {
                            "replicas": 2,
                            "selector": {"matchLabels": {"app": "web"}},
                            "template": {
                                "metadata": {"labels": {"app": "web"}},
                                "spec": {
                                    "initContainers": [{"name": "init", "image": "init:1"}],
                                    "containers": [{"name": "web", "image": "web:1"}, {"name": "side", "image": "s:1"}],
                                },
                            },
                        },
                    }
                },
                "workloadTweaks": [],
            },
            "pools": ["hangzhou", "missing"],
            "nodepoolSelector": {"matchLabels": {"region": "north"}},
        },
    }
    body["spec"].update(spec)
    return body


def names(pools: list[Obj]) -> list[str]:
    return [p["metadata"]["name"] for p in pools]


def test_pools_are_selected_by_name_or_by_their_labels_and_a_missing_named_pool_is_skipped() -> None:
    assert names(appset.selected_pools(yas(), POOLS)) == ["beijing", "hangzhou"]
    by_expression = yas(
        pools=[], nodepoolSelector={"matchExpressions": [{"key": "region", "operator": "In", "values": ["east"]}]}
    )
    assert names(appset.selected_pools(by_expression, POOLS)) == ["hangzhou", "shanghai"]
    assert names(appset.selected_pools(yas(pools=None, nodepoolSelector=None), POOLS)) == []
    assert names(appset.selected_pools(yas(pools=[], nodepoolSelector={}), POOLS)) == [
        "beijing",
        "hangzhou",
        "shanghai",
    ]


@pytest.mark.parametrize(
    ("expression", "labels", "matches"),
    [
        ({"key": "a", "operator": "NotIn", "values": ["x"]}, {"a": "y"}, True),
        ({"key": "a", "operator": "NotIn", "values": ["x"]}, {"a": "x"}, False),
        ({"key": "a", "operator": "Exists"}, {}, False),
        ({"key": "a", "operator": "DoesNotExist"}, {}, True),
        ({"key": "a", "operator": "Gt", "values": ["1"]}, {"a": "2"}, False),
    ],
)
def test_label_selector_operators(expression: Obj, labels: dict[str, str], matches: bool) -> None:
    assert appset.selector_matches({"matchExpressions": [expression]}, labels) is matches


def test_the_deployment_for_a_pool_is_shaped_as_openyurt_shapes_it() -> None:
    d = appset.desired(yas(), POOLS[0])
    meta = d["metadata"]
    revision = meta["labels"][appset.REVISION_LABEL]
    assert meta["generateName"] == "web-hangzhou-" and meta["namespace"] == "shop" and "name" not in meta
    assert meta["labels"] == {
        "app": "web",
        appset.POOL_NAME_LABEL: "hangzhou",
        appset.REF_LABEL: "web",
        appset.REVISION_LABEL: revision,
    }
    assert meta["annotations"] == {"team": "a", appset.REF_POOL_ANNOTATION: "hangzhou"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "apps.openyurt.io/v1beta1",
            "kind": "YurtAppSet",
            "name": "web",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = d["spec"]
    assert spec["selector"] == {"matchLabels": {"app": "web", appset.POOL_NAME_LABEL: "hangzhou"}}
    assert spec["template"]["metadata"]["labels"] == {
        "app": "web",
        appset.POOL_NAME_LABEL: "hangzhou",
        appset.REVISION_LABEL: revision,
    }
    assert spec["template"]["spec"]["nodeSelector"] == {appset.NODEPOOL_LABEL: "hangzhou"}
    assert appset.generate_name("w" * 250, "p") == "w" * 250 + "-"


def tweak(**tweaks: Any) -> Obj:
    return {"pools": ["hangzhou"], "tweaks": tweaks}


def test_tweaks_apply_in_order_images_reach_init_containers_and_patches_name_the_pool() -> None:
    tweaks = [
        tweak(replicas=5, containerImages=[{"name": "web", "targetImage": "web:2"}]),
        {"nodepoolSelector": {"matchLabels": {"region": "east"}}, "tweaks": {"replicas": 7}},
        tweak(
            containerImages=[{"name": "init", "targetImage": "init:2"}],
            patches=[
                {
                    "path": "/spec/template/spec/containers/0/env",
                    "operation": "add",
                    "value": [{"name": "POOL", "value": "{{nodepool-name}}"}],
                },
                {"path": "/spec/template/spec/containers/1", "operation": "remove"},
                {"path": "/metadata/labels/app", "operation": "replace", "value": "web-{{nodepool-name}}"},
            ],
        ),
    ]
    spec = yas()
    spec["spec"]["workload"]["workloadTweaks"] = tweaks
    d = appset.desired(spec, POOLS[0])
    assert d["spec"]["replicas"] == 7
    pod = d["spec"]["template"]["spec"]
    assert pod["containers"] == [{"name": "web", "image": "web:2", "env": [{"name": "POOL", "value": "hangzhou"}]}]
    assert pod["initContainers"] == [{"name": "init", "image": "init:2"}]
    assert d["metadata"]["labels"]["app"] == "web-hangzhou"
    other = appset.desired(spec, POOLS[1])
    assert other["spec"]["replicas"] == 2 and other["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1"


def revisions(spec: Obj) -> dict[str, str]:
    return {p["metadata"]["name"]: appset.pool_revision(appset.render(spec, p)) for p in POOLS}


def test_a_tweak_changes_only_its_pools_revision_and_a_template_change_changes_every_pool() -> None:
    before = revisions(yas())
    tweaked = yas()
    tweaked["spec"]["workload"]["workloadTweaks"] = [tweak(replicas=9)]
    after = revisions(tweaked)
    assert [p for p in before if before[p] != after[p]] == ["hangzhou"]
    rolled = yas()
    rolled["spec"]["workload"]["workloadTemplate"]["deploymentTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ] = "web:3"
    assert all(revisions(rolled)[p] != before[p] for p in before)
    assert appset.workload_revision(tweaked) != appset.workload_revision(yas())


@pytest.mark.parametrize(
    "op",
    [
        {"path": "/spec/nothere/x", "operation": "add", "value": 1},
        {"path": "/spec/nothere", "operation": "replace", "value": 1},
        {"path": "/spec/template/spec/containers/9", "operation": "remove"},
        {"path": "spec", "operation": "add", "value": 1},
        {"path": "/spec/replicas", "operation": "move"},
    ],
)
def test_a_patch_that_does_not_apply_is_an_error(op: Obj) -> None:
    with pytest.raises(appset.PatchError):
        appset.json_patch(appset.render(yas(), POOLS[0]), [op])


def test_json_patch_follows_rfc6902_for_arrays_and_escapes() -> None:
    doc = {"a": [1, 2], "b/c": {"~d": 1}}
    out = appset.json_patch(
        doc,
        [
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "add", "path": "/a/0", "value": 0},
            {"op": "replace", "path": "/b~1c/~0d", "value": 2},
        ],
    )
    assert out == {"a": [0, 1, 2, 3], "b/c": {"~d": 2}} and doc == {"a": [1, 2], "b/c": {"~d": 1}}


def existing(spec: Obj, pool_obj: Obj, name: str, **status: Any) -> Obj:
    d = appset.desired(spec, pool_obj)
    d["metadata"].update(name=name, generation=1, creationTimestamp=f"2026-01-01T00:00:0{len(name) % 10}Z")
    d["status"] = status
    return d


def test_the_plan_creates_missing_updates_stale_and_deletes_unselected_and_duplicate_workloads() -> None:
    spec = yas()
    by_name = {p["metadata"]["name"]: p for p in POOLS}
    stale = existing(spec, by_name["beijing"], "web-beijing-aaaaa")
    stale["metadata"]["labels"][appset.REVISION_LABEL] = "old"
    gone = existing(spec, by_name["shanghai"], "web-shanghai-aaaaa")
    current = existing(spec, by_name["hangzhou"], "web-hangzhou-aaaaa")
    duplicate = existing(spec, by_name["hangzhou"], "web-hangzhou-bbbbbb")
    foreign = copy.deepcopy(gone)
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    result = appset.plan(spec, POOLS, [stale, gone, current, duplicate, foreign])
    got = sorted((a.verb, a.pool, a.name) for a in result.actions)
    assert got == [
        ("delete", "hangzhou", "web-hangzhou-bbbbbb"),
        ("delete", "shanghai", "web-shanghai-aaaaa"),
        ("update", "beijing", "web-beijing-aaaaa"),
    ]
    update = next(a for a in result.actions if a.verb == "update")
    assert update.body is not None and update.body["metadata"]["name"] == "web-beijing-aaaaa"
    assert update.body["spec"] == appset.desired(spec, by_name["beijing"])["spec"]
    empty = appset.plan(spec, POOLS, [])
    assert sorted((a.verb, a.pool) for a in empty.actions) == [("create", "beijing"), ("create", "hangzhou")]


def test_a_statefulset_template_is_refused_and_nothing_is_touched() -> None:
    spec = yas()
    spec["spec"]["workload"]["workloadTemplate"] = {"statefulSetTemplate": {"spec": {}}}
    running = existing(yas(), POOLS[0], "web-hangzhou-aaaaa")
    result = appset.plan(spec, POOLS, [running])
    assert result.actions == [] and result.problem is not None and result.problem[0] == "UnsupportedWorkload"
    st = appset.status(spec, POOLS, [], result, {}, "2026-01-01T00:00:00Z")
    dispatched = next(c for c in st["conditions"] if c["type"] == "AppDispatched")
    assert dispatched["status"] == "False" and dispatched["reason"] == "UnsupportedWorkload"


def test_a_tweak_whose_patch_fails_keeps_other_pools_going_and_says_why() -> None:
    spec = yas()
    spec["spec"]["workload"]["workloadTweaks"] = [
        tweak(patches=[{"path": "/nothere/x", "operation": "add", "value": 1}])
    ]
    result = appset.plan(spec, POOLS, [])
    assert [(a.verb, a.pool) for a in result.actions] == [("create", "beijing")]
    st = appset.status(spec, POOLS, [], result, {}, "t")
    dispatched = next(c for c in st["conditions"] if c["type"] == "AppDispatched")
    assert dispatched["reason"] == "CreateWorkloadError" and "pool hangzhou" in dispatched["message"]


def test_status_counts_ready_and_updated_per_pool_and_keeps_transition_times() -> None:
    spec = yas()
    by_name = {p["metadata"]["name"]: p for p in POOLS}
    ready = existing(
        spec, by_name["hangzhou"], "web-hangzhou-a", readyReplicas=2, updatedReplicas=2, observedGeneration=1
    )
    rolling = existing(
        spec, by_name["beijing"], "web-beijing-a", readyReplicas=1, updatedReplicas=1, observedGeneration=1
    )
    result = appset.plan(spec, POOLS, [ready, rolling])
    st = appset.status(spec, POOLS, [ready, rolling], result, {}, "2026-01-01T00:00:00Z")
    assert (st["totalWorkloads"], st["readyWorkloads"], st["updatedWorkloads"]) == (2, 1, 1)
    assert st["observedGeneration"] == 3 and st["currentRevision"] == appset.workload_revision(spec)
    assert [(p["pool"], p["ready"], p["updated"]) for p in st["poolStatus"]] == [
        ("beijing", False, False),
        ("hangzhou", True, True),
    ]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert conditions == {
        "PoolFound": ("True", "FindPools"),
        "AppDispatched": ("True", "AppDispatched"),
        "AppDeleted": ("True", "AppDeleted"),
        "AppUpdated": ("True", "AppUpdated"),
        "AppReady": ("False", "NotAllWorkloadsReady"),
    }
    spec["status"] = st
    rolling["status"]["readyReplicas"] = rolling["status"]["updatedReplicas"] = 2
    later = appset.status(spec, POOLS, [ready, rolling], result, {"update": "pool x: refused"}, "2026-01-02T00:00:00Z")
    times = {c["type"]: c["lastTransitionTime"] for c in later["conditions"]}
    assert times["PoolFound"] == "2026-01-01T00:00:00Z"
    assert times["AppReady"] == times["AppUpdated"] == "2026-01-02T00:00:00Z"
    none = appset.status(
        yas(pools=[], nodepoolSelector=None),
        POOLS,
        [],
        appset.plan(yas(pools=[], nodepoolSelector=None), POOLS, []),
        {},
        "t",
    )
    assert {c["type"]: c["reason"] for c in none["conditions"]}["PoolFound"] == "NoFindPools"
    assert {c["type"]: c["reason"] for c in none["conditions"]}["AppReady"] == "NoWorkloadFound"


def test_a_workload_is_not_updated_before_its_controller_saw_the_new_spec() -> None:
    d = existing(yas(), POOLS[0], "web-hangzhou-a", readyReplicas=2, updatedReplicas=2, observedGeneration=1)
    revision = d["metadata"]["labels"][appset.REVISION_LABEL]
    assert appset.workload_updated(d, revision)
    d["metadata"]["generation"] = 2
    assert not appset.workload_updated(d, revision)
    assert not appset.workload_ready({"spec": {"replicas": 0}, "status": {}})


def test_the_crd_is_shipped_and_yurt_manager_may_only_do_what_it_needs() -> None:

    crd = components.appset_objects()[0]
    assert crd["metadata"]["name"] == "yurtappsets.apps.openyurt.io"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1beta1" and version["storage"] and version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["yas"] and crd["spec"]["scope"] == "Namespaced"
    rules = components.manager_rules()
    deployments = [r for r in rules if "deployments" in r["resources"]]
    assert deployments == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }
    ]
    assert not any("yurtappsets" in r["resources"] and {"create", "update", "delete"} & set(r["verbs"]) for r in rules)
    assert (
        plan.object_path(crd) == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/yurtappsets.apps.openyurt.io"
    )


@pytest.mark.parametrize(
    "op",
    [
        {"path": "/metadata/namespace", "operation": "replace", "value": "kube-system"},
        {"path": "/metadata/ownerReferences", "operation": "remove"},
        {"path": "/metadata/name", "operation": "add", "value": "fixed"},
        {"path": "/metadata/labels/apps.openyurt.io~1ref-yurtappset", "operation": "replace", "value": "other"},
        {"path": "/spec/selector/matchLabels/apps.openyurt.io~1pool-name", "operation": "remove"},
        {"path": "/kind", "operation": "replace", "value": "DaemonSet"},
    ],
)
def test_a_patch_may_not_move_the_workload_out_of_its_namespace_or_away_from_its_owner(op: Obj) -> None:
    spec = yas()
    spec["spec"]["workload"]["workloadTweaks"] = [tweak(patches=[op])]
    with pytest.raises(appset.PatchError, match="may not change"):
        appset.render(spec, POOLS[0])
    assert [a.pool for a in appset.plan(spec, POOLS, []).actions] == ["beijing"]
