"""Offline endpoint rewrites (`endpoints`): this node's pods' endpoints follow the cached pods' addresses and
readiness; other nodes' endpoints, other pods and objects already true are left alone (None)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from yurthub import endpoints

NODE = "edge-1"


def pod(
    name: str, ips: list[str], ready: bool, node: str = NODE, uid: str = "", deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": uid or f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T10:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {
            "podIP": ips[0] if ips else "",
            "podIPs": [{"ip": ip} for ip in ips],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def endpoint(name: str, ip: str, node: str = NODE, ready: bool = True, uid: str = "") -> dict[str, Any]:
    return {
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": ready, "terminating": False},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": name, "uid": uid or f"uid-{name}"},
    }


def eps_slice(*eps: dict[str, Any], family: str = "IPv4") -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "web-abc", "namespace": "shop", "resourceVersion": "10"},
        "addressType": family,
        "endpoints": list(eps),
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }


def pods(*ps: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in ps}


CASES: list[tuple[str, dict[str, Any], dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]] | None]] = [
    (
        "a local pod with a new IP after an offline reboot",
        eps_slice(endpoint("web-1", "10.0.0.5")),
        pods(pod("web-1", ["10.0.0.9"], ready=True)),
        [{**endpoint("web-1", "10.0.0.9")}],
    ),
    (
        "a local pod not ready yet: ready and serving false, address kept until it has one",
        eps_slice(endpoint("web-1", "10.0.0.5")),
        pods(pod("web-1", [], ready=False)),
        [{**endpoint("web-1", "10.0.0.5", ready=False)}],
    ),
    (
        "a local pod being deleted is terminating and not ready, but still serving",
        eps_slice(endpoint("web-1", "10.0.0.5")),
        pods(pod("web-1", ["10.0.0.5"], ready=True, deleting=True)),
        [{**endpoint("web-1", "10.0.0.5"), "conditions": {"ready": False, "serving": True, "terminating": True}}],
    ),
    (
        "a pod of another node is the cloud's business",
        eps_slice(endpoint("web-2", "10.0.1.5", node="edge-2")),
        pods(pod("web-2", ["10.0.1.9"], ready=True, node="edge-2")),
        None,
    ),
    (
        "a different pod by the same name (other uid) is not rewritten",
        eps_slice(endpoint("web-1", "10.0.0.5", uid="old")),
        pods(pod("web-1", ["10.0.0.9"], ready=True, uid="new")),
        None,
    ),
    (
        "an endpoint already true is no change",
        eps_slice(endpoint("web-1", "10.0.0.5")),
        pods(pod("web-1", ["10.0.0.5"], ready=True)),
        None,
    ),
    (
        "an IPv6 slice takes the pod's IPv6 address only",
        eps_slice(endpoint("web-1", "fd00::5"), family="IPv6"),
        pods(pod("web-1", ["10.0.0.9", "fd00::9"], ready=True)),
        [endpoint("web-1", "fd00::9")],
    ),
    (
        "only the local endpoint changes in a slice with both",
        eps_slice(endpoint("web-1", "10.0.0.5"), endpoint("web-2", "10.0.1.5", node="edge-2")),
        pods(pod("web-1", ["10.0.0.9"], ready=True)),
        [endpoint("web-1", "10.0.0.9"), endpoint("web-2", "10.0.1.5", node="edge-2")],
    ),
]


@pytest.mark.parametrize(("case", "original", "cached", "expected"), CASES, ids=[c[0] for c in CASES])
def test_slice_rewrites(
    case: str,
    original: dict[str, Any],
    cached: dict[tuple[str, str], dict[str, Any]],
    expected: list[dict[str, Any]] | None,
) -> None:
    before = copy.deepcopy(original)
    out = endpoints.rewrite_slice(original, NODE, cached)
    assert original == before  # never mutated
    if expected is None:
        assert out is None, case
    else:
        assert out is not None, case
        assert out["endpoints"] == expected, case
        assert out["ports"] == original["ports"] and out["metadata"] == original["metadata"]


def test_a_publish_not_ready_endpoint_stays_ready() -> None:
    published = endpoint("web-1", "10.0.0.5")
    published["conditions"] = {"ready": True, "serving": False, "terminating": False}  # ready though not serving
    out = endpoints.rewrite_slice(eps_slice(published), NODE, pods(pod("web-1", ["10.0.0.9"], ready=False)))
    assert out is not None
    assert out["endpoints"][0]["addresses"] == ["10.0.0.9"]
    assert out["endpoints"][0]["conditions"]["ready"] is True


def endpoints_object(ready: list[dict[str, Any]], not_ready: list[dict[str, Any]]) -> dict[str, Any]:
    subset: dict[str, Any] = {"ports": [{"port": 80}]}
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    return {"kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"}, "subsets": [subset]}


def address(name: str, ip: str, node: str = NODE) -> dict[str, Any]:
    return {
        "ip": ip,
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": name, "uid": f"uid-{name}"},
    }


def test_endpoints_addresses_follow_ip_and_readiness() -> None:
    original = endpoints_object([address("web-1", "10.0.0.5"), address("web-2", "10.0.1.5", "edge-2")], [])
    out = endpoints.rewrite_endpoints(original, NODE, pods(pod("web-1", ["10.0.0.9"], ready=False)))
    assert out is not None
    subset = out["subsets"][0]
    assert subset["addresses"] == [address("web-2", "10.0.1.5", "edge-2")]
    assert subset["notReadyAddresses"] == [address("web-1", "10.0.0.9")]
    back = endpoints.rewrite_endpoints(out, NODE, pods(pod("web-1", ["10.0.0.9"], ready=True)))
    assert back is not None
    assert [a["ip"] for a in back["subsets"][0]["addresses"]] == ["10.0.1.5", "10.0.0.9"]
    assert "notReadyAddresses" not in back["subsets"][0]
    assert endpoints.rewrite_endpoints(back, NODE, pods(pod("web-1", ["10.0.0.9"], ready=True))) is None
    json.dumps(back)  # still plain JSON
