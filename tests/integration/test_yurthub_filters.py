"""Response filters through yurthub against the real kube-apiserver, online and offline.

Each filter is checked on LIST and WATCH for a JSON client and a protobuf client (client-go's
`application/vnd.kubernetes.protobuf,application/json`): filtered requests are negotiated as JSON, so both get
filtered JSON, from the cloud online and from the cache offline. Requests no filter applies to stay byte-exact
(`test_yurthub_proxy.py`); here one check confirms it beside the filtered ones.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testenv import cluster, controlplane, relay
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud
from tests.integration.test_yurthub_proxy import KUBELET, PB, call

PROXY = "kube-proxy/v1.34.12 (linux/amd64) kubernetes/test"
ENCODINGS = ["application/json", PB]
SERVICES = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
POOL = "apps.openyurt.io/nodepool"


@pytest.fixture(scope="module")
def door_port() -> int:
    return controlplane.free_port()


@pytest.fixture(scope="module")
def fhub(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path_factory: pytest.TempPathFactory, door_port: int
) -> Iterator[Hub]:
    """yurthub with its HTTPS door on 127.0.0.1 (no interface of its own on the host) and default filters."""
    assert cloud.plane is not None
    directory: Path = tmp_path_factory.mktemp("yurthub-filters")
    cert, key = cloud.plane.ca.issue("yurthub-door", server=True, ip_addresses=("127.0.0.1",)).write(directory, "door")
    cluster_objects(cloud)
    h = start_hub(
        cloud,
        link,
        directory,
        f"--secure-cert-file={cert}",
        f"--secure-key-file={key}",
        "--no-enable-dummy-if",
        "--dummy-if-ip=127.0.0.1",
        f"--proxy-secure-port={door_port}",
    )
    yield h
    stop_hub(h)


def node(name: str, pool: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {POOL: pool}}}


def service(name: str, *, annotations: dict[str, str] | None = None, lb: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": 80}]}
    if lb:
        spec["type"] = "LoadBalancer"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
        "spec": spec,
    }


def endpoint_slice(service_name: str, nodes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-manual",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name, "endpointslice.kubernetes.io/managed-by": "test"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [f"10.1.0.{i + 1}"], "nodeName": n, "conditions": {"ready": True}}
            for i, n in enumerate(nodes)
        ],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }


def cluster_objects(cloud: cluster.Cluster) -> None:
    """Two pools (ours: yurt-test and yurt-near; another: yurt-far) and Services for every filter."""
    cloud.kubectl.run("label", "node", NODE, f"{POOL}=pool-a", "--overwrite")
    cloud.kubectl.apply(
        [
            {  # what servicetopology needs beyond Node authorization: the nodes of its pool (README)
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "yurthub-pool-nodes"},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "yurthub-pool-nodes"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "yurthub-pool-nodes",
                },
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}],
            },
            node("yurt-near", "pool-a"),
            node("yurt-far", "pool-b"),
            service("lb-discard", annotations={"svc.openyurt.io/discard": "true"}, lb=True),
            service("lb-keep", lb=True),
            service("lb-flip", lb=True),
            service("on-node", annotations={"openyurt.io/topologyKeys": "kubernetes.io/hostname"}),
            service("in-pool", annotations={"openyurt.io/topologyKeys": "openyurt.io/nodepool"}),
            service("anywhere"),
            endpoint_slice("on-node", [NODE, "yurt-near", "yurt-far"]),
            endpoint_slice("in-pool", [NODE, "yurt-near", "yurt-far"]),
            endpoint_slice("anywhere", [NODE, "yurt-near", "yurt-far"]),
        ]
    )


def listed(hub: Hub, path: str, agent: str, accept: str) -> dict[str, Any]:
    code, ctype, body = call(hub.proxy + path, agent=agent, accept=accept)
    assert code == 200, body[:300]
    assert ctype.startswith("application/json"), "filtered requests are answered as JSON"
    doc: dict[str, Any] = json.loads(body)
    return doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in doc["items"]}


def endpoint_nodes(item: dict[str, Any]) -> list[str | None]:
    return sorted((e.get("nodeName") for e in item.get("endpoints") or []), key=str)


def watch(
    hub: Hub, path: str, agent: str, accept: str, rv: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Events of a watch from `rv` until `done(events)` or the server ends the stream."""
    sep = "&" if "?" in path else "?"
    url = f"{hub.proxy}{path}{sep}watch=1&resourceVersion={rv}&timeoutSeconds=20&allowWatchBookmarks=true"
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": agent})
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("application/json")
        for line in resp:
            if line.strip():
                events.append(json.loads(line))
                if done(events):
                    break
    return events


def names_in(events: list[dict[str, Any]], kind: str) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] == kind]


# --- masterservice -----------------------------------------------------------------------------------


def check_master_service(hub: Hub, door_port: int, accept: str) -> None:
    kubernetes = by_name(listed(hub, SERVICES, KUBELET, accept))["default/kubernetes"]
    assert kubernetes["spec"]["clusterIP"] == "127.0.0.1"
    assert kubernetes["spec"]["clusterIPs"] == ["127.0.0.1"]
    assert [p["port"] for p in kubernetes["spec"]["ports"] if p["name"] == "https"] == [door_port]
    slices = [s for s in listed(hub, SLICES, PROXY, accept)["items"] if s["metadata"]["name"] == "kubernetes"]
    assert [s["endpoints"] for s in slices] == [[{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]]
    assert [p["port"] for p in slices[0]["ports"] if p["name"] == "https"] == [door_port]


@pytest.mark.parametrize("accept", ENCODINGS)
def test_masterservice_points_kubelet_and_kube_proxy_at_the_door(
    fhub: Hub, cloud: cluster.Cluster, link: relay.Relay, door_port: int, accept: str
) -> None:
    check_master_service(fhub, door_port, accept)
    # others see the real Service, byte for byte what the cloud says
    code, _, body = call(
        fhub.proxy + "/api/v1/namespaces/default/services/kubernetes", agent="kubectl/v1", accept=accept
    )
    assert code == 200 and b"127.0.0.1" not in body
    rv = listed(fhub, SERVICES, KUBELET, accept)["metadata"]["resourceVersion"]
    cloud.kubectl.run("annotate", "service", "kubernetes", f"yurt-test/touched={accept.count(',')}", "--overwrite")
    events = watch(fhub, SERVICES, KUBELET, accept, rv, lambda ev: bool(names_in(ev, "MODIFIED")))
    [modified] = [e["object"] for e in events if e["type"] == "MODIFIED"]
    assert modified["metadata"]["name"] == "kubernetes" and modified["spec"]["clusterIPs"] == ["127.0.0.1"]
    added = watch(fhub, SLICES, PROXY, accept, "0", lambda ev: ("ADDED", "kubernetes") in names_in(ev, "ADDED"))
    [pointed] = [e["object"] for e in added if e["object"]["metadata"]["name"] == "kubernetes"]
    assert pointed["endpoints"][0]["addresses"] == ["127.0.0.1"]
    link.cut()
    try:
        wait_cloud(fhub, reachable=False)
        check_master_service(fhub, door_port, accept)
    finally:
        link.restore()
        wait_cloud(fhub, reachable=True)


# --- discardcloudservice ---------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ENCODINGS)
def test_discardcloudservice_hides_cloud_only_load_balancers_from_kube_proxy(
    fhub: Hub, cloud: cluster.Cluster, link: relay.Relay, accept: str
) -> None:
    cloud.kubectl.apply([service("lb-flip", lb=True)])
    seen = by_name(listed(fhub, SERVICES, PROXY, accept))
    assert "default/lb-keep" in seen and "default/lb-flip" in seen and "default/lb-discard" not in seen
    assert "default/lb-discard" in by_name(listed(fhub, SERVICES, KUBELET, accept)), "kubelet gets no such filter"
    rv = listed(fhub, SERVICES, PROXY, accept)["metadata"]["resourceVersion"]
    added = watch(fhub, SERVICES, PROXY, accept, "0", lambda ev: ("ADDED", "lb-keep") in names_in(ev, "ADDED"))
    assert ("ADDED", "lb-discard") not in names_in(added, "ADDED")
    flip = service("lb-flip", annotations={"svc.openyurt.io/discard": "true"}, lb=True)
    cloud.kubectl.apply([flip])
    events = watch(fhub, SERVICES, PROXY, accept, rv, lambda ev: bool(names_in(ev, "DELETED")))
    assert names_in(events, "DELETED") == [("DELETED", "lb-flip")], "a service that became cloud-only is deleted"
    link.cut()
    try:
        wait_cloud(fhub, reachable=False)
        offline = by_name(listed(fhub, SERVICES, PROXY, accept))
        assert "default/lb-keep" in offline
        assert "default/lb-discard" not in offline and "default/lb-flip" not in offline
        code, _, body = call(fhub.proxy + SERVICES, agent=PROXY, accept="application/vnd.kubernetes.protobuf")
        assert code == 406 and json.loads(body)["reason"] == "NotAcceptable"
    finally:
        link.restore()
        wait_cloud(fhub, reachable=True)
        cloud.kubectl.apply([service("lb-flip", lb=True)])


# --- servicetopology -------------------------------------------------------------------------------


def check_topology(items: dict[str, dict[str, Any]]) -> None:
    assert endpoint_nodes(items["default/on-node-manual"]) == [NODE]
    assert endpoint_nodes(items["default/in-pool-manual"]) == sorted([NODE, "yurt-near"])
    assert endpoint_nodes(items["default/anywhere-manual"]) == sorted([NODE, "yurt-near", "yurt-far"])


@pytest.mark.parametrize("accept", ENCODINGS)
def test_servicetopology_limits_endpoints_to_the_node_or_its_pool(
    fhub: Hub, cloud: cluster.Cluster, link: relay.Relay, accept: str
) -> None:
    cloud.kubectl.apply([endpoint_slice("on-node", [NODE, "yurt-near", "yurt-far"])])
    doc = listed(fhub, SLICES, PROXY, accept)
    check_topology(by_name(doc))
    code, _, body = call(fhub.proxy + SLICES, agent="kubectl/v1")
    assert code == 200 and len(endpoint_nodes(by_name(json.loads(body))["default/on-node-manual"])) == 3
    added = watch(fhub, SLICES, PROXY, accept, "0", lambda ev: len(names_in(ev, "ADDED")) >= len(doc["items"]))
    check_topology({f"default/{e['object']['metadata']['name']}": e["object"] for e in added})
    cloud.kubectl.apply([endpoint_slice("on-node", ["yurt-far", NODE, "yurt-near", "yurt-far"])])
    events = watch(
        fhub, SLICES, PROXY, accept, doc["metadata"]["resourceVersion"], lambda ev: bool(names_in(ev, "MODIFIED"))
    )
    [modified] = [e["object"] for e in events if e["type"] == "MODIFIED"]
    assert modified["metadata"]["name"] == "on-node-manual" and endpoint_nodes(modified) == [NODE]
    link.cut()
    try:
        wait_cloud(fhub, reachable=False)
        check_topology(by_name(listed(fhub, SLICES, PROXY, accept)))
    finally:
        link.restore()
        wait_cloud(fhub, reachable=True)
