"""Response filters as pure functions: each filter's rule, the chain over objects, lists and watch events,
and the configuration of who gets which filter."""

from __future__ import annotations

import json
from typing import Any

import pytest

from yurthub import config, filters, requestinfo, wire

PROXY = requestinfo.parse("GET", "/apis/discovery.k8s.io/v1/endpointslices", {}, "kube-proxy/v1.34")
KUBELET = requestinfo.parse("GET", "/api/v1/services", {}, "kubelet/v1.34")
DOOR = ("169.254.2.1", 10268)


def service(name: str, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": "7"}
    meta.update(extra.pop("meta", {}))
    spec = {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ports": [{"name": "https", "port": 443}]}
    spec.update(extra)
    return {"kind": "Service", "apiVersion": "v1", "metadata": meta, "spec": spec}


def slice_(service_name: str, *nodes: str | None, namespace: str = "default", family: str = "IPv4") -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": f"{service_name}-abc",
            "namespace": namespace,
            "resourceVersion": "9",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": family,
        "endpoints": [
            {"addresses": [f"10.0.0.{i}"], "conditions": {"ready": True}, **({"nodeName": n} if n else {})}
            for i, n in enumerate(nodes)
        ],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def test_masterservice_points_the_kubernetes_service_at_the_door() -> None:
    apply = filters.master_service(*DOOR)
    original = service("kubernetes")
    out = apply(KUBELET, original)
    assert out is not None and out is not original
    assert out["spec"]["clusterIP"] == "169.254.2.1" and out["spec"]["clusterIPs"] == ["169.254.2.1"]
    assert out["spec"]["ports"] == [{"name": "https", "port": 10268}]
    assert original["spec"]["clusterIP"] == "10.96.0.1", "the input is never mutated"
    other = service("web")
    assert apply(KUBELET, other) is other
    elsewhere = service("kubernetes", namespace="kube-system")
    assert apply(KUBELET, elsewhere) is elsewhere


def test_masterservice_gives_the_kubernetes_slice_one_endpoint_at_the_door() -> None:
    apply = filters.master_service(*DOOR)
    out = apply(PROXY, slice_("kubernetes", None, None))
    assert out is not None
    assert out["endpoints"] == [{"addresses": ["169.254.2.1"], "conditions": {"ready": True}}]
    assert out["ports"] == [{"name": "https", "port": 10268, "protocol": "TCP"}]
    assert apply(PROXY, slice_("kubernetes", None, family="IPv6")) is None, "the other family cannot reach the door"
    web = slice_("web", "n1")
    assert apply(PROXY, web) is web


@pytest.mark.parametrize(
    ("svc", "dropped"),
    [
        (service("lb", type="LoadBalancer", meta={"annotations": {"svc.openyurt.io/discard": "true"}}), True),
        (service("lb", type="LoadBalancer", meta={"annotations": {"svc.openyurt.io/discard": "false"}}), False),
        (service("lb", type="LoadBalancer"), False),
        (service("cip", meta={"annotations": {"svc.openyurt.io/discard": "true"}}), False),
        (service("x-tunnel-server-internal-svc", namespace="kube-system"), True),
    ],
)
def test_discardcloudservice_drops_annotated_load_balancers_only(svc: dict[str, Any], dropped: bool) -> None:
    out = filters.discard_cloud_service(KUBELET, svc)
    assert (out is None) == dropped
    if not dropped:
        assert out is svc


def annotated(key: str) -> filters.Facts:
    return filters.Facts("n1", frozenset({"n1", "n2"}), {("default", "web"): key})


@pytest.mark.parametrize(
    ("facts", "kept"),
    [
        (annotated("kubernetes.io/hostname"), ["n1"]),
        (annotated("openyurt.io/nodepool"), ["n1", "n2"]),
        (annotated("kubernetes.io/zone"), ["n1", "n2"]),
        (filters.Facts("n1", frozenset(), {("default", "web"): "openyurt.io/nodepool"}), ["n1"]),
        (filters.Facts("n1", frozenset({"n1", "n2"}), {}), ["n1", "n2", "n3", None]),
        (annotated("something/else"), ["n1", "n2", "n3", None]),
    ],
)
def test_servicetopology_keeps_the_endpoints_its_service_asks_for(facts: filters.Facts, kept: list[str | None]) -> None:
    original = slice_("web", "n1", "n2", "n3", None)
    out = filters.service_topology(facts)(PROXY, original)
    assert out is not None
    assert [e.get("nodeName") for e in out["endpoints"]] == kept
    assert len(original["endpoints"]) == 4
    if len(kept) == 4:
        assert out is original


def test_facts_round_trip_through_json() -> None:
    facts = annotated("kubernetes.io/hostname")
    assert filters.Facts.from_json(facts.to_json()) == facts


def chain(*names: str) -> filters.Chain:
    return filters.build(names, door=DOOR, facts=annotated("kubernetes.io/hostname"))


def test_an_unchanged_list_keeps_its_bytes_and_a_changed_one_keeps_the_apiservers_framing() -> None:
    items = [body(service("web")), body(service("kubernetes")), body(service("db"))]
    listing = wire.build_list(wire.Encoding.JSON, "v1", "ServiceList", "42", False, items)
    assert filters.list_body(chain(filters.DISCARD_CLOUD_SERVICE), KUBELET, listing) is listing
    out = filters.list_body(chain(filters.MASTER_SERVICE), KUBELET, listing)
    doc = json.loads(out)
    assert [i["metadata"]["name"] for i in doc["items"]] == ["web", "kubernetes", "db"]
    assert doc["items"][1]["spec"]["clusterIP"] == "169.254.2.1"
    assert doc["metadata"]["resourceVersion"] == "42"
    assert "kind" not in doc["items"][0], "list items of built-in kinds carry no kind, as the apiserver sends them"
    untouched = listing.split(b'"items":[', 1)[1].split(b"},{", 1)[0]
    assert untouched in out, "items no filter changed keep their bytes"


def test_a_dropped_item_leaves_the_list() -> None:
    lb = service("lb", type="LoadBalancer", meta={"annotations": {"svc.openyurt.io/discard": "true"}})
    listing = wire.build_list(wire.Encoding.JSON, "v1", "ServiceList", "5", False, [body(service("web")), body(lb)])
    doc = json.loads(filters.list_body(chain(filters.DISCARD_CLOUD_SERVICE), KUBELET, listing))
    assert [i["metadata"]["name"] for i in doc["items"]] == ["web"]


def _event(event_type: str, doc: dict[str, Any]) -> bytes:
    return b'{"type":"' + event_type.encode() + b'","object":' + body(doc).rstrip(b"\n") + b"}"


def test_watch_events_dropped_objects_become_deleted_unless_they_were_just_added() -> None:
    discard = chain(filters.DISCARD_CLOUD_SERVICE)
    lb = service("lb", type="LoadBalancer", meta={"annotations": {"svc.openyurt.io/discard": "true"}})
    assert filters.event_frame(discard, KUBELET, _event("ADDED", lb)) is None
    for kind in ("MODIFIED", "DELETED"):
        out = filters.event_frame(discard, KUBELET, _event(kind, lb))
        assert out is not None and json.loads(out) == {"type": "DELETED", "object": lb}
    kept = _event("MODIFIED", service("web"))
    assert filters.event_frame(discard, KUBELET, kept) is kept
    bookmark = b'{"type":"BOOKMARK","object":{"kind":"Service","apiVersion":"v1","metadata":{"resourceVersion":"9"}}}'
    assert filters.event_frame(discard, KUBELET, bookmark) is bookmark


def test_watch_events_carry_rewritten_objects() -> None:
    out = filters.event_frame(chain(filters.MASTER_SERVICE), KUBELET, _event("ADDED", service("kubernetes")))
    assert out is not None
    doc = json.loads(out)
    assert doc["type"] == "ADDED" and doc["object"]["spec"]["clusterIPs"] == ["169.254.2.1"]


def test_a_filter_without_its_input_is_left_out_of_the_chain() -> None:
    names = (filters.SERVICE_TOPOLOGY, filters.MASTER_SERVICE, filters.DISCARD_CLOUD_SERVICE)
    assert len(filters.build(names, door=None, facts=None).filters) == 1
    assert len(filters.build(names, door=DOOR, facts=annotated("x")).filters) == 3


def test_default_rules_give_each_component_its_filters_on_its_resources_only() -> None:
    table = filters.index(filters.parse_rules([]))
    assert filters.names_for(table, KUBELET) == (filters.MASTER_SERVICE,)
    assert filters.names_for(table, PROXY) == (filters.SERVICE_TOPOLOGY, filters.MASTER_SERVICE)
    proxy_services = requestinfo.parse("GET", "/api/v1/services", {"watch": "true"}, "kube-proxy/v1")
    assert filters.names_for(table, proxy_services) == (filters.DISCARD_CLOUD_SERVICE,)
    for untouched in (
        requestinfo.parse("GET", "/api/v1/pods", {}, "kubelet/v1"),
        requestinfo.parse("PUT", "/api/v1/namespaces/default/services/kubernetes", {}, "kubelet/v1"),
        requestinfo.parse("GET", "/api/v1/services", {}, "kubectl/v1"),
        requestinfo.parse("GET", "/api/v1/namespaces/default/services/kubernetes/status", {}, "kubelet/v1"),
    ):
        assert filters.names_for(table, untouched) == ()


def test_rules_are_configurable_and_bad_ones_are_refused() -> None:
    rules = filters.parse_rules(["masterservice=kubelet,my-agent/services"], ["discardcloudservice"])
    assert rules[filters.MASTER_SERVICE] == ("kubelet/endpointslices", "kubelet/services", "my-agent/services")
    assert rules[filters.DISCARD_CLOUD_SERVICE] == ()
    assert filters.parse_rules(["servicetopology="])[filters.SERVICE_TOPOLOGY] == ()
    for bad, complaint in (
        (["nosuch=kubelet"], "NAME is one of"),
        (["masterservice"], "NAME is one of"),
        (["discardcloudservice=kube-proxy/pods"], "not 'pods'"),
        (["masterservice=/services"], "names no component"),
    ):
        with pytest.raises(config.ConfigError, match=complaint):
            filters.parse_rules(bad)
    with pytest.raises(config.ConfigError, match="unknown filter"):
        filters.parse_rules([], ["nosuch"])
