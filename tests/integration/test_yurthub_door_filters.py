"""Response filters and the HTTPS door for pods, through yurthub against the real kube-apiserver, online and offline.

Each filter is checked on LIST and WATCH for a JSON client and a protobuf client (client-go's
`application/vnd.kubernetes.protobuf,application/json`): filtered requests are negotiated as JSON, so both get
filtered JSON, from the cloud online and from the cache offline. Requests no filter applies to stay byte-exact
(`test_yurthub_proxy.py`); here one check confirms it beside the filtered ones.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from converter import components
from testenv import cluster, controlplane, relay
from testenv.kubectl import wait_for
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
    """Two pools (ours: yurt-test and yurt-near; another: yurt-far) and Services for every filter.

    The pool is a NodePool, read with stock Node authorization plus what `yurtctl convert` installs (the CRD
    and `get` on NodePools for every node); nodes may not list nodes. Its `status.nodes` is set here as
    yurt-manager would. `yurt-stray` carries pool-a's label but is not in `status.nodes`: the NodePool,
    not the label, decides."""
    cloud.kubectl.run("label", "node", NODE, f"{POOL}=pool-a", "--overwrite")
    cloud.kubectl.apply(components.nodepool_objects())
    cloud.kubectl.run("wait", "--for=condition=Established", f"crd/{components.NODEPOOL_CRD}", "--timeout=60s")
    cloud.kubectl.apply(
        [
            {
                "apiVersion": "apps.openyurt.io/v1beta2",
                "kind": "NodePool",
                "metadata": {"name": "pool-a"},
                "spec": {"type": "Edge"},
            }
        ]
    )
    cloud.kubectl.run(
        "patch",
        "nodepool",
        "pool-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"nodes": [NODE, "yurt-near"], "readyNodeNum": 2, "unreadyNodeNum": 0}}),
    )
    cloud.kubectl.apply(
        [
            node("yurt-stray", "pool-a"),
            node("yurt-near", "pool-a"),
            node("yurt-far", "pool-b"),
            service("lb-discard", annotations={"svc.openyurt.io/discard": "true"}, lb=True),
            service("lb-keep", lb=True),
            service("lb-flip", lb=True),
            service("on-node", annotations={"openyurt.io/topologyKeys": "kubernetes.io/hostname"}),
            service("in-pool", annotations={"openyurt.io/topologyKeys": "openyurt.io/nodepool"}),
            service("anywhere"),
            endpoint_slice("on-node", [NODE, "yurt-near", "yurt-far"]),
            endpoint_slice("in-pool", [NODE, "yurt-near", "yurt-far", "yurt-stray"]),
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


def with_token(hub: Hub, path: str, agent: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        hub.proxy + path,
        headers={"Accept": "application/json", "User-Agent": agent, "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=15) as resp:
        assert resp.status == 200
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def test_one_token_read_as_kube_proxy_and_as_another_client_keeps_each_answer_offline_on_both_ports(
    fhub: Hub, cloud: cluster.Cluster, link: relay.Relay, door_port: int
) -> None:
    """Filters go by User-Agent, the cache scope of a request with its own token by that token: one token used
    both ways must not share one cached list, or offline the last fetched answer (unfiltered, here) would be
    served to kube-proxy."""
    cloud.kubectl.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "proxier", "namespace": "default"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "test-proxier"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:node-proxier",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "proxier", "namespace": "default"}],
            },
            endpoint_slice("on-node", [NODE, "yurt-near", "yurt-far"]),
        ]
    )
    token = cloud.kubectl.run("create", "token", "proxier", "-n", "default", "--duration=1h").strip()
    check_topology(by_name(with_token(fhub, SLICES, PROXY, token)))

    def door(agent: str) -> dict[str, dict[str, Any]]:
        code, _, body = through_door(cloud, door_port, SLICES, token, agent=agent)
        assert code == 200, body[:300]
        return by_name(json.loads(body))

    check_topology(door(PROXY))  # kube-proxy with its own token on the door: filtered as on the plain port
    unfiltered = by_name(with_token(fhub, SLICES, "kubectl/v1", token))
    assert len(endpoint_nodes(unfiltered["default/on-node-manual"])) == 3
    link.cut()
    try:
        wait_cloud(fhub, reachable=False)
        check_topology(by_name(with_token(fhub, SLICES, PROXY, token)))
        check_topology(door(PROXY))
        offline = by_name(with_token(fhub, SLICES, "kubectl/v1", token))
        assert len(endpoint_nodes(offline["default/on-node-manual"])) == 3
    finally:
        link.restore()
        wait_cloud(fhub, reachable=True)


# --- the HTTPS door for pods -------------------------------------------------------------------------


def door_context(cloud: cluster.Cluster) -> ssl.SSLContext:
    assert cloud.plane is not None
    return ssl.create_default_context(cafile=str(cloud.plane.directory / "pki" / "ca.crt"))


def pod_token(cloud: cluster.Cluster, account: str) -> str:
    return cloud.kubectl.run("create", "token", account, "-n", "team", "--duration=1h").strip()


@pytest.fixture(scope="module")
def team(cloud: cluster.Cluster) -> None:
    """Namespace `team`: ServiceAccounts that may read its ConfigMaps (and nothing else), a ConfigMap, a Secret."""
    cloud.kubectl.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}},
            *(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": n, "namespace": "team"}}
                for n in ("reader", "other-reader")
            ),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-configmaps", "namespace": "team"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "read-configmaps", "namespace": "team"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
                "subjects": [
                    {"kind": "ServiceAccount", "name": n, "namespace": "team"} for n in ("reader", "other-reader")
                ],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "app", "namespace": "team"},
                "data": {"a": "1"},
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "elsewhere"}, "data": {}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s", "namespace": "team"},
                "stringData": {"k": "v"},
            },
        ]
    )


def through_door(
    cloud: cluster.Cluster,
    door_port: int,
    path: str,
    token: str | None,
    accept: str = "application/json",
    agent: str = "app/1.0",
) -> tuple[int, str, bytes]:
    headers = {"Accept": accept, "User-Agent": agent}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"https://127.0.0.1:{door_port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15, context=door_context(cloud)) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


CONFIGMAPS = "/api/v1/namespaces/team/configmaps"


def test_the_door_forwards_a_pods_own_token_and_answers_offline_only_what_that_token_read(
    fhub: Hub, cloud: cluster.Cluster, link: relay.Relay, door_port: int, team: None
) -> None:
    token, other = pod_token(cloud, "reader"), pod_token(cloud, "other-reader")
    code, ctype, body = through_door(cloud, door_port, CONFIGMAPS, None)
    assert (code, ctype) == (401, "application/json") and json.loads(body)["reason"] == "Unauthorized"
    online = {accept: through_door(cloud, door_port, CONFIGMAPS, token, accept) for accept in ENCODINGS}
    assert online["application/json"][0] == 200
    assert "app" in [i["metadata"]["name"] for i in json.loads(online["application/json"][2])["items"]]
    for beyond in ("/api/v1/namespaces/team/secrets", "/api/v1/namespaces/elsewhere/configmaps"):
        assert through_door(cloud, door_port, beyond, token)[0] == 403, "the pod's own rights, not the node's"
    # the node itself reads `elsewhere` (it may, in this test cluster): that is in the cache, for the node only
    assert call(fhub.proxy + "/api/v1/namespaces/elsewhere/configmaps")[0] == 200
    assert token.encode() not in b"".join(p.read_bytes() for p in fhub.cache.rglob("*") if p.is_file())
    link.cut()
    try:
        wait_cloud(fhub, reachable=False)
        for accept, want in online.items():
            assert through_door(cloud, door_port, CONFIGMAPS, token, accept) == want, accept
        for path, who in (
            ("/api/v1/namespaces/elsewhere/configmaps", token),  # the node cached it, this token never read it
            ("/api/v1/namespaces/team/secrets", token),
            (CONFIGMAPS, other),  # same rights, but its own requests never happened
        ):
            code, _, body = through_door(cloud, door_port, path, who)
            assert code == 503 and json.loads(body)["kind"] == "Status", path
        assert through_door(cloud, door_port, CONFIGMAPS, None)[0] == 401
        code, _, _ = through_door(cloud, door_port, CONFIGMAPS.replace("configmaps", "events"), token)
        assert code == 503
    finally:
        link.restore()
        wait_cloud(fhub, reachable=True)


def replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def peer_cn(conn: http.client.HTTPSConnection) -> str:
    assert conn.sock is not None
    der = conn.sock.getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    return str(x509.load_der_x509_certificate(der).subject.rfc4514_string())


def test_a_renewed_serving_certificate_is_used_for_new_connections_and_open_ones_go_on(
    fhub: Hub, cloud: cluster.Cluster, door_port: int, team: None
) -> None:
    assert cloud.plane is not None
    token = pod_token(cloud, "reader")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    kept = http.client.HTTPSConnection("127.0.0.1", door_port, context=door_context(cloud), timeout=15)
    kept.request("GET", CONFIGMAPS, headers=headers)
    assert kept.getresponse().read() and peer_cn(kept) == "CN=yurthub-door"
    renewed = cloud.plane.ca.issue("yurthub-door-renewed", server=True, ip_addresses=("127.0.0.1",))
    cert_file = fhub.cache.parent / "door.crt"  # where the fixture wrote it
    replace_atomically(cert_file, renewed.cert_pem)  # the certificate first: a moment of mismatch, then the key
    replace_atomically(cert_file.with_suffix(".key"), renewed.key_pem)

    def new_connection_cn() -> str:
        fresh = http.client.HTTPSConnection("127.0.0.1", door_port, context=door_context(cloud), timeout=15)
        try:
            fresh.request("GET", CONFIGMAPS, headers=headers)
            assert fresh.getresponse().status == 200
            return peer_cn(fresh)
        finally:
            fresh.close()

    wait_for(
        "the door to serve the renewed certificate",
        lambda: new_connection_cn() == "CN=yurthub-door-renewed",
        timeout=20,
    )
    kept.request("GET", CONFIGMAPS, headers=headers)
    response = kept.getresponse()
    assert response.status == 200 and json.loads(response.read())["items"]
    assert peer_cn(kept) == "CN=yurthub-door", "the open connection goes on with the certificate it was made with"
    kept.close()
