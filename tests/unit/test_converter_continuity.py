"""The endpoint-keeping decision (`converter.continuity`): which endpoints of pods on autonomous, unreachable
nodes stay ready, as a table, and the JSON Patches and rewrites that follow from it."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from converter import continuity, names

Obj = dict[str, Any]
NOW = datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC).timestamp()
UID, IP = "uid-web-1", "10.244.1.7"


def stamp(seconds_ago: float) -> str:
    return datetime.datetime.fromtimestamp(NOW - seconds_ago, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(
    *,
    edge: bool = True,
    autonomy: str | None = "true",
    duration: str | None = None,
    ready: str = "Unknown",
    ago: float = 60,
) -> Obj:
    annotations = {}
    if autonomy is not None:
        annotations[names.AUTONOMY_ANNOTATION] = autonomy
    if duration is not None:
        annotations[names.AUTONOMY_DURATION_ANNOTATION] = duration
    return {
        "metadata": {
            "name": "edge-1",
            "labels": {names.EDGE_WORKER_LABEL: "true" if edge else "false"},
            "annotations": annotations,
        },
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": stamp(ago)}]},
    }


def pod(
    *,
    containers_ready: str = "True",
    ready: str = "False",
    gates: dict[str, str] | None = None,
    phase: str = "Running",
    node_name: str = "edge-1",
    terminating: bool = False,
) -> Obj:
    conditions = [
        {"type": "Ready", "status": ready},  # False: what the node lifecycle controller writes
        {"type": "ContainersReady", "status": containers_ready},
        *({"type": k, "status": v} for k, v in (gates or {}).items()),
    ]
    meta: Obj = {"name": "web-1", "namespace": "shop", "uid": UID}
    if terminating:
        meta["deletionTimestamp"] = stamp(1)
    return {
        "metadata": meta,
        "spec": {"nodeName": node_name, "readinessGates": [{"conditionType": k} for k in gates or {}]},
        "status": {"phase": phase, "conditions": conditions, "podIP": IP, "podIPs": [{"ip": IP}]},
    }


def target(**changes: str) -> continuity.Target:
    fields = {"node": "edge-1", "namespace": "shop", "name": "web-1", "uid": UID, "ip": IP, **changes}
    return continuity.Target(fields["node"], (fields["namespace"], fields["name"]), fields["uid"], fields["ip"])


KEEP_TABLE = [
    ("autonomous, unreachable, kubelet said ready", node(), pod(), target(), True),
    ("autonomous, NotReady (kubelet's own report)", node(ready="False"), pod(), target(), True),
    ("the node is Ready: kubelet's word stands", node(ready="True"), pod(), target(), False),
    ("not autonomous", node(autonomy=None), pod(), target(), False),
    ("autonomy turned off", node(autonomy="false"), pod(), target(), False),
    ("annotated but not an edge node", node(edge=False), pod(), target(), False),
    ("within the autonomy duration", node(autonomy=None, duration="10m", ago=599), pod(), target(), True),
    ("the autonomy duration lapsed", node(autonomy=None, duration="10m", ago=600), pod(), target(), False),
    ("duration 0 is forever", node(autonomy=None, duration="0", ago=1e7), pod(), target(), True),
    ("the duration wins over the boolean", node(autonomy="true", duration="1m", ago=61), pod(), target(), False),
    ("kubelet said containers not ready", node(), pod(containers_ready="False"), target(), False),
    ("a readiness gate is false", node(), pod(gates={"example.com/lb": "False"}), target(), False),
    ("every readiness gate is true", node(), pod(gates={"example.com/lb": "True"}), target(), True),
    ("the pod is terminating", node(), pod(terminating=True), target(), False),
    ("the pod finished", node(), pod(phase="Succeeded"), target(), False),
    ("forged: another uid (a pod recreated by name)", node(), pod(), target(uid="uid-other"), False),
    ("forged: no uid", node(), pod(), target(uid=""), False),
    ("forged: an address that is not the pod's", node(), pod(), target(ip="10.0.0.99"), False),
    ("forged: the pod runs on another node", node(), pod(node_name="edge-2"), target(), False),
    ("forged: a pod of another namespace", node(), pod(), target(namespace="other"), False),
]


@pytest.mark.parametrize(
    ("case", "the_node", "the_pod", "the_target", "kept"), KEEP_TABLE, ids=[r[0] for r in KEEP_TABLE]
)
def test_which_endpoints_are_kept(
    case: str, the_node: Obj, the_pod: Obj, the_target: continuity.Target, kept: bool
) -> None:
    nodes = {"edge-1": the_node}
    pods = {("shop", "web-1"): the_pod}
    assert continuity.keep(the_target, nodes, pods, NOW) is kept, case


def test_a_missing_node_or_pod_is_never_kept() -> None:
    assert not continuity.keep(target(), {}, {("shop", "web-1"): pod()}, NOW)
    assert not continuity.keep(target(), {"edge-1": node()}, {}, NOW)


def endpoint(ready: bool, *, ns: str = "shop", terminating: bool = False, uid: str = UID, ip: str = IP) -> Obj:
    return {
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready, "terminating": terminating},
        "nodeName": "edge-1",
        "targetRef": {"kind": "Pod", "namespace": ns, "name": "web-1", "uid": uid},
    }


def a_slice(*endpoints: Obj) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abcde", "namespace": "shop", "labels": dict(continuity.SLICE_MANAGED_BY)},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
    }


NODES = {"edge-1": node()}
PODS = {("shop", "web-1"): pod()}


def test_the_webhook_patch_turns_only_kept_endpoints_ready_and_serving() -> None:
    other = endpoint(False, uid="uid-x", ip="10.244.1.8") | {"targetRef": {"kind": "Pod", "name": "gone", "uid": "x"}}
    s = a_slice(endpoint(True, ip="10.244.9.9", uid="uid-y"), endpoint(False), other)
    ops = continuity.admit_slice(s, NODES, PODS, NOW)
    assert ops == [
        {
            "op": "replace",
            "path": "/endpoints/1/conditions",
            "value": {"ready": True, "serving": True, "terminating": False},
        }
    ]


def test_the_webhook_adds_conditions_when_an_endpoint_has_none_and_never_touches_terminating_ones() -> None:
    bare = endpoint(False)
    del bare["conditions"]
    assert continuity.admit_slice(a_slice(bare), NODES, PODS, NOW) == []  # no conditions: "unknown", read as ready
    bare["conditions"] = {"ready": False}
    assert continuity.admit_slice(a_slice(bare), NODES, PODS, NOW)[0]["value"] == {"ready": True, "serving": True}
    assert continuity.admit_slice(a_slice(endpoint(False, terminating=True)), NODES, PODS, NOW) == []


def test_a_forged_slice_gains_nothing() -> None:
    for forged in (
        endpoint(False, ns="other"),  # a targetRef into another namespace
        endpoint(False, ip="10.0.0.99"),  # an address that is not the pod's
        endpoint(False, uid="uid-other"),
        endpoint(False) | {"targetRef": {"kind": "Node", "name": "edge-1"}},
        endpoint(False) | {"nodeName": "edge-2"},
    ):
        assert continuity.admit_slice(a_slice(forged), NODES | {"edge-2": node()}, PODS, NOW) == []


def test_the_pass_lets_go_once_autonomy_lapses_and_leaves_published_not_ready_services_alone() -> None:
    kept = a_slice(endpoint(True))
    assert continuity.reconcile_slice(kept, NODES, PODS, NOW, publish_not_ready=False) is None
    lapsed = {"edge-1": node(autonomy=None, duration="1m", ago=61)}
    released = continuity.reconcile_slice(kept, lapsed, PODS, NOW, publish_not_ready=False)
    assert released is not None
    assert released["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert kept["endpoints"][0]["conditions"]["ready"] is True  # not changed in place
    assert continuity.reconcile_slice(kept, lapsed, PODS, NOW, publish_not_ready=True) is None
    # a pod the API shows Ready, or a node that is back, is the stock controllers' business
    ready_pod = {("shop", "web-1"): pod(ready="True")}
    assert continuity.reconcile_slice(kept, lapsed, ready_pod, NOW, publish_not_ready=False) is None
    assert continuity.reconcile_slice(kept, {"edge-1": node(ready="True")}, PODS, NOW, publish_not_ready=False) is None


def test_the_pass_makes_good_a_write_the_webhook_missed() -> None:
    missed = a_slice(endpoint(False))
    fixed = continuity.reconcile_slice(missed, NODES, PODS, NOW, publish_not_ready=False)
    assert fixed is not None and fixed["endpoints"][0]["conditions"]["ready"] is True


def address(ip: str, uid: str, name: str = "web-1") -> Obj:
    return {"ip": ip, "nodeName": "edge-1", "targetRef": {"kind": "Pod", "namespace": "shop", "name": name, "uid": uid}}


def endpoints_obj(ready: list[Obj], not_ready: list[Obj]) -> Obj:
    subset: Obj = {"ports": [{"port": 80, "protocol": "TCP"}]}
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "subsets": [subset],
    }


def test_endpoints_move_kept_addresses_to_ready_in_the_controllers_order_and_back_when_released() -> None:
    other = address("10.244.1.9", "uid-other", "web-2")  # on a Ready pod elsewhere, stays where it is
    obj = endpoints_obj([other], [address(IP, UID)])
    ops = continuity.admit_endpoints(obj, NODES, PODS, NOW)
    assert ops == [
        {
            "op": "replace",
            "path": "/subsets",
            "value": [{"ports": [{"port": 80, "protocol": "TCP"}], "addresses": [address(IP, UID), other]}],
        }
    ]
    kept = copy.deepcopy(obj)
    kept["subsets"] = ops[0]["value"]
    assert continuity.admit_endpoints(kept, NODES, PODS, NOW) == []  # the same write again is a no-op
    lapsed = {"edge-1": node(autonomy="false")}
    released = continuity.reconcile_endpoints(kept, lapsed, PODS, NOW, publish_not_ready=False)
    assert released is not None and released["subsets"] == obj["subsets"]
    assert continuity.admit_endpoints(endpoints_obj([], [address("10.0.0.99", UID)]), NODES, PODS, NOW) == []
