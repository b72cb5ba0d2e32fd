"""Pod status patches applied as kube-apiserver applies them (`podstatus`): a table of kubelet-shaped strategic
merge patches (the shape its status manager sends: `metadata.uid`, `$setElementOrder/conditions`, only the
changed conditions, whole container status lists, an old IP as a `$patch: delete` element), the other two
patch types, the preconditions, and the delivery patch built against the cloud's current pod."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from yurthub import errors, podstatus

ABSENT = "<absent>"
"""In an expected status: the field must be gone."""
UID = "0d6b3f2e-5a1c-4d9e-8b7a-1f2e3d4c5b6a"


def cond(kind: str, status: str, at: str = "2026-11-29T09:00:00Z") -> dict[str, Any]:
    return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": at}


def pod(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Running",
        "conditions": [
            cond("PodReadyToStartContainers", "True"),
            cond("Initialized", "True"),
            cond("Ready", "True"),
            cond("ContainersReady", "True"),
            cond("PodScheduled", "True"),
        ],
        "hostIP": "192.168.1.10",
        "hostIPs": [{"ip": "192.168.1.10"}],
        "podIP": "10.0.0.5",
        "podIPs": [{"ip": "10.0.0.5"}],
        "startTime": "2026-11-29T08:59:00Z",
        "containerStatuses": [
            {"name": "web", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": "x"}}},
            {"name": "side", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": "x"}}},
        ],
        "qosClass": "BestEffort",
    }
    base.update(status)
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": "web-1", "namespace": "shop", "uid": UID, "resourceVersion": "4711", "labels": {"a": "b"}},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "web", "image": "busybox"}]},
        "status": base,
    }


def smp(status: dict[str, Any], uid: str = UID) -> bytes:
    return json.dumps({"metadata": {"uid": uid}, "status": status}).encode()


ORDER = {
    "$setElementOrder/conditions": [
        {"type": t} for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
}

# (case, patch body, expected status fields after the patch: field -> value)
KUBELET_PATCHES: list[tuple[str, bytes, dict[str, Any]]] = [
    (
        "new IP after an offline reboot: old IP deleted by directive, order set",
        smp(
            {
                **ORDER,
                "$setElementOrder/podIPs": [{"ip": "10.0.0.9"}],
                "podIP": "10.0.0.9",
                "podIPs": [{"ip": "10.0.0.9"}, {"$patch": "delete", "ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "lastTransitionTime": "2026-11-29T10:00:00Z"}],
            }
        ),
        {
            "podIP": "10.0.0.9",
            "podIPs": [{"ip": "10.0.0.9"}],
            "conditions": [
                cond("PodReadyToStartContainers", "True"),
                cond("Initialized", "True"),
                cond("Ready", "True", "2026-11-29T10:00:00Z"),
                cond("ContainersReady", "True"),
                cond("PodScheduled", "True"),
            ],
        },
    ),
    (
        "readiness lost: two conditions change, only their changed fields sent, merged by type",
        smp(
            {
                **ORDER,
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "message": "m"},
                    {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady"},
                ],
            }
        ),
        {
            "conditions": [
                cond("PodReadyToStartContainers", "True"),
                cond("Initialized", "True"),
                {**cond("Ready", "False"), "reason": "ContainersNotReady", "message": "m"},
                {**cond("ContainersReady", "False"), "reason": "ContainersNotReady"},
                cond("PodScheduled", "True"),
            ]
        },
    ),
    (
        "container statuses carry no patch strategy: the list sent replaces the cached one whole",
        smp({"containerStatuses": [{"name": "web", "ready": False, "restartCount": 1, "state": {"waiting": {}}}]}),
        {"containerStatuses": [{"name": "web", "ready": False, "restartCount": 1, "state": {"waiting": {}}}]},
    ),
    (
        "a condition type new to the pod is appended, then ordered by $setElementOrder",
        smp(
            {
                "$setElementOrder/conditions": [
                    {"type": "DisruptionTarget"},
                    *ORDER["$setElementOrder/conditions"],
                ],
                "conditions": [cond("DisruptionTarget", "True")],
            }
        ),
        {
            "conditions": [
                cond("DisruptionTarget", "True"),
                cond("PodReadyToStartContainers", "True"),
                cond("Initialized", "True"),
                cond("Ready", "True"),
                cond("ContainersReady", "True"),
                cond("PodScheduled", "True"),
            ]
        },
    ),
    (
        "a null value deletes a field; a dual-stack host IP is merged by ip",
        smp({"message": None, "qosClass": None, "hostIPs": [{"ip": "fd00::10"}]}),
        {"hostIPs": [{"ip": "192.168.1.10"}, {"ip": "fd00::10"}], "qosClass": ABSENT, "message": ABSENT},
    ),
    (
        "$patch: replace on a merged list makes it exactly the patch's",
        smp({"podIPs": [{"$patch": "replace"}, {"ip": "10.0.0.7"}, {"ip": "fd00::7"}]}),
        {"podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}]},
    ),
    (
        "phase goes terminal; init container statuses replace; podIPs untouched when not sent",
        smp({"phase": "Succeeded", "initContainerStatuses": [{"name": "init", "ready": False, "restartCount": 0}]}),
        {
            "phase": "Succeeded",
            "initContainerStatuses": [{"name": "init", "ready": False, "restartCount": 0}],
            "podIPs": [{"ip": "10.0.0.5"}],
        },
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), KUBELET_PATCHES, ids=[c for c, _, _ in KUBELET_PATCHES])
def test_kubelet_shaped_strategic_merge_patches(case: str, body: bytes, expected: dict[str, Any]) -> None:
    original = pod()
    before = json.dumps(original, sort_keys=True)
    out = podstatus.patch_status(original, body, "application/strategic-merge-patch+json")
    assert json.dumps(original, sort_keys=True) == before  # the input is never changed
    for field, value in expected.items():
        if value == ABSENT:
            assert field not in out["status"], case
        else:
            assert out["status"][field] == value, case
    assert out["metadata"]["resourceVersion"] == "4712"  # one past the cached one
    assert out["metadata"]["labels"] == {"a": "b"} and out["spec"] == original["spec"]


def test_only_status_changes_through_the_status_subresource() -> None:
    body = json.dumps({"metadata": {"labels": {"evil": "1"}}, "spec": {"nodeName": "other"}, "status": {"phase": "X"}})
    out = podstatus.patch_status(pod(), body.encode(), "application/merge-patch+json")
    assert out["status"]["phase"] == "X"
    assert out["metadata"]["labels"] == {"a": "b"}
    assert out["spec"]["nodeName"] == "edge-1"


def test_a_json_merge_patch_replaces_lists_whole() -> None:
    body = json.dumps({"status": {"podIPs": [{"ip": "10.0.0.8"}], "podIP": "10.0.0.8", "message": None}})
    out = podstatus.patch_status(pod(message="hi"), body.encode(), "application/merge-patch+json; charset=utf-8")
    assert out["status"]["podIPs"] == [{"ip": "10.0.0.8"}]
    assert "message" not in out["status"]
    assert len(out["status"]["conditions"]) == 5


def test_a_json_patch_applies_its_operations_in_order() -> None:
    ops = [
        {"op": "test", "path": "/status/podIP", "value": "10.0.0.5"},
        {"op": "replace", "path": "/status/podIP", "value": "10.0.0.6"},
        {"op": "add", "path": "/status/podIPs/-", "value": {"ip": "fd00::6"}},
        {"op": "remove", "path": "/status/podIPs/0"},
        {"op": "copy", "from": "/status/hostIP", "path": "/status/message"},
        {"op": "move", "from": "/status/message", "path": "/status/reason"},
    ]
    out = podstatus.patch_status(pod(), json.dumps(ops).encode(), "application/json-patch+json")
    assert out["status"]["podIP"] == "10.0.0.6"
    assert out["status"]["podIPs"] == [{"ip": "fd00::6"}]
    assert out["status"]["reason"] == "192.168.1.10" and "message" not in out["status"]


def test_a_failed_json_patch_test_is_the_apiservers_422() -> None:
    ops = [{"op": "test", "path": "/status/podIP", "value": "1.2.3.4"}]
    with pytest.raises(errors.PatchRefused) as caught:
        podstatus.patch_status(pod(), json.dumps(ops).encode(), "application/json-patch+json")
    assert caught.value.code == 422


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_other_media_types_get_the_apiservers_415(content_type: str) -> None:
    with pytest.raises(errors.PatchRefused) as caught:
        podstatus.patch_status(pod(), b"{}", content_type)
    assert (caught.value.code, caught.value.reason) == (415, "UnsupportedMediaType")
    assert str(caught.value) == (
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, "
        "application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
    )


@pytest.mark.parametrize("body", [b"{not json", b"[1]", json.dumps({"status": {"podIPs": [{"no": "key"}]}}).encode()])
def test_a_malformed_strategic_patch_is_a_400(body: bytes) -> None:
    with pytest.raises(errors.PatchRefused) as caught:
        podstatus.patch_status(pod(), body, "application/strategic-merge-patch+json")
    assert caught.value.code == 400


def test_another_pods_uid_is_a_409_precondition_failure() -> None:
    with pytest.raises(errors.PatchConflict, match="Precondition failed: UID in precondition"):
        podstatus.patch_status(pod(), smp({"phase": "Failed"}, uid="other"), "application/strategic-merge-patch+json")


def test_a_stale_resource_version_is_a_409_conflict() -> None:
    body = json.dumps({"metadata": {"resourceVersion": "1"}, "status": {"phase": "Failed"}}).encode()
    with pytest.raises(errors.PatchConflict, match="the object has been modified"):
        podstatus.patch_status(pod(), body, "application/merge-patch+json")


def test_retain_keys_and_delete_from_primitive_list() -> None:
    original = {"status": {"resourceClaimStatuses": [{"name": "a", "resourceClaimName": "x", "extra": 1}]}}
    patch = {"status": {"resourceClaimStatuses": [{"name": "a", "$retainKeys": ["name", "resourceClaimName"]}]}}
    out = podstatus.strategic_merge(original, patch, podstatus.POD_SCHEMA)
    assert out["status"]["resourceClaimStatuses"] == [{"name": "a", "resourceClaimName": "x"}]
    out = podstatus.strategic_merge({"f": ["a", "b", "c"]}, {"$deleteFromPrimitiveList/f": ["b"]}, {})
    assert out == {"f": ["a", "c"]}


def test_delivery_patch_gives_the_cloud_pod_the_nodes_status_and_deletes_stale_ips() -> None:
    cloud = pod(podIP="10.0.0.5", message="from the cloud")
    cloud["metadata"]["resourceVersion"] = "9000"
    cloud["status"]["conditions"].append(cond("DisruptionTarget", "True"))
    ours = pod(podIP="10.0.0.9", podIPs=[{"ip": "10.0.0.9"}])["status"]
    patch = podstatus.delivery_patch(cloud, ours)
    assert patch["metadata"] == {"uid": UID, "resourceVersion": "9000"}
    result = podstatus.strategic_merge(cloud, patch, podstatus.POD_SCHEMA)
    assert result["status"]["podIPs"] == [{"ip": "10.0.0.9"}]
    assert result["status"]["podIP"] == "10.0.0.9"
    assert "message" not in result["status"]  # not in the node's status: not kept from the cloud's
    types = [c["type"] for c in result["status"]["conditions"]]
    assert "DisruptionTarget" in types and len(types) == 6  # a controller's condition stays


def test_next_version_sorts_after_and_refuses_what_is_not_a_number() -> None:
    assert podstatus.next_version("99") == "100"
    with pytest.raises(errors.PatchRefused):
        podstatus.next_version("abc")


FIXTURES = Path(__file__).parent / "fixtures" / "kubelet_status_patches.json"
"""Made by `fixtures/statuspatches` (Go, k8s.io/apimachinery and k8s.io/api v0.34.12): for each case the
patch kubelet's status manager sends (`CreateTwoWayMergePatch` from `{"status": old}` to
`{"metadata":{"uid"}, "status": new}` over v1.Pod, as `PatchPodStatus` does) and the pod the apiserver makes
of it (`StrategicMergePatch` over v1.Pod)."""
CAPTURED = json.loads(FIXTURES.read_text())


@pytest.mark.parametrize("captured", CAPTURED, ids=[c["case"] for c in CAPTURED])
def test_kubelets_real_patches_give_the_apiservers_pod(captured: dict[str, Any]) -> None:
    out = podstatus.patch_status(captured["original"], json.dumps(captured["patch"]).encode(), podstatus.STRATEGIC)
    assert out["status"] == captured["result"]["status"]
    assert out["metadata"]["resourceVersion"] == "4712"
