"""kubelet's pod status patches through yurthub while the cloud is cut, against the real kube-apiserver.

A pod bound to the test node (no kubelet runs: the test speaks kubelet's requests, with kubelet's Accept)
gets a status through yurthub while online, so the cloud's EndpointSlice controller puts it in its Service.
Then the link is cut and kubelet patches a new pod IP (the strategic merge patch its status manager sends
after an offline reboot): yurthub answers 200 with the pod, serves the new IP on offline GETs, and the
slice it serves kube-proxy points at the new IP. When the link is restored the status reaches the cloud
(the cloud's pod shows the new IP, and so does its EndpointSlice). A pod deleted and recreated under the
same name while the node was cut off does not get the old pod's status. A watch held offline ends only
once the cloud has the pod's new status, though a reboot's worth of Events was queued before it.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testenv import cluster, relay
from testenv.kubectl import wait_for
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud
from tests.integration.test_yurthub_proxy import KUBELET, PB, call

NS = "pod-status"
PROXY = "kube-proxy/v1.34.12 (linux/amd64) kubernetes/test"
COREDNS = "CoreDNS/1.12.0 git_commit:51e11f1 (linux/amd64)"
SMP = "application/strategic-merge-patch+json"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
MY_PODS = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"


@pytest.fixture
def hub(cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path) -> Iterator[Hub]:
    """yurthub with the topology filter off: kube-proxy's slices then pass unfiltered, as JSON on its ask."""
    cloud.kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
    h = start_hub(cloud, link, tmp_path, "--disabled-resource-filters=servicetopology")
    try:
        wait_cloud(h, reachable=True)
        yield h
    finally:
        stop_hub(h)
        link.restore()


def web_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {
            "nodeName": NODE,
            "containers": [{"name": "web", "image": "busybox"}],
            "tolerations": [{"operator": "Exists"}],
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "protocol": "TCP"}]},
    }


def kubelet(hub: Hub, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    code, ctype, raw = call(hub.proxy + path, method=method, accept=PB, body=data, content_type=SMP, agent=KUBELET)
    return code, ctype, json.loads(raw) if ctype.startswith("application/json") else {"protobuf": raw}


def running(uid: str, ip: str, old: str | None = None) -> dict[str, Any]:
    """The shape of kubelet's status patch: uid, `$setElementOrder`, the changed conditions, the new IP and
    the old one deleted by directive."""
    ips: list[dict[str, Any]] = [{"ip": ip}] + ([{"ip": old, "$patch": "delete"}] if old else [])
    return {
        "metadata": {"uid": uid},
        "status": {
            "$setElementOrder/conditions": [{"type": "Ready"}],
            "$setElementOrder/podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None}],
            "phase": "Running",
            "podIP": ip,
            "podIPs": ips,
        },
    }


def slice_addresses(cloud: cluster.Cluster, name: str) -> list[str]:
    slices = cloud.kubectl.get("endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={name}")
    return [a for s in slices["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]


def proxy_addresses(hub: Hub, name: str) -> list[str]:
    code, _, raw = call(hub.proxy + SLICES, agent=PROXY)
    assert code == 200
    items = json.loads(raw)["items"]
    own = [s for s in items if s["metadata"]["labels"].get("kubernetes.io/service-name") == name]
    return [a for s in own for e in s.get("endpoints") or [] for a in e["addresses"]]


def first_watch_event(hub: Hub, path: str, agent: str, started: threading.Event) -> dict[str, Any]:
    """Open a watch through yurthub, say when its answer started (yurthub holds it from then on), and
    return its first event (read on a worker thread by the caller)."""
    request = urllib.request.Request(hub.proxy + path, headers={"Accept": "application/json", "User-Agent": agent})
    with urllib.request.urlopen(request, timeout=60) as resp:
        started.set()
        event: dict[str, Any] = json.loads(resp.readline())
        return event


def endpoints_addresses(hub: Hub, name: str) -> list[str]:
    """The v1 Endpoints of a Service as a JSON client (CoreDNS's User-Agent) reads them through yurthub."""
    code, _, raw = call(hub.proxy + f"/api/v1/namespaces/{NS}/endpoints", agent=COREDNS)
    assert code == 200
    own = [e for e in json.loads(raw)["items"] if e["metadata"]["name"] == name]
    return [a["ip"] for e in own for s in e.get("subsets") or [] for a in s.get("addresses") or []]


def online_pod(cloud: cluster.Cluster, hub: Hub, name: str, ip: str) -> str:
    """The pod running at `ip` as the cloud sees it, its Service's slice listing it; and cached through
    yurthub (kubelet's list of its pods, kube-proxy's list of slices). Returns its uid."""
    cloud.kubectl.apply([web_pod(name), service(name)])
    uid = str(cloud.kubectl.get("pod", "-n", NS, name)["metadata"]["uid"])
    code, _, answer = kubelet(hub, "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", running(uid, ip))
    assert code == 200, answer
    wait_for(f"the slice of {name} to list {ip}", lambda: slice_addresses(cloud, name) == [ip], timeout=60)
    code, ctype, pods = kubelet(hub, "GET", MY_PODS)
    assert code == 200 and ctype.startswith("application/json")  # kubelet's pods are negotiated as JSON
    assert name in [p["metadata"]["name"] for p in pods["items"]]
    assert proxy_addresses(hub, name) == [ip]
    wait_for(f"the Endpoints of {name} to list {ip}", lambda: endpoints_addresses(hub, name) == [ip], timeout=60)
    return uid


def test_an_offline_status_patch_is_served_offline_and_reaches_the_cloud(
    cloud: cluster.Cluster, link: relay.Relay, hub: Hub
) -> None:
    uid = online_pod(cloud, hub, "web", "10.244.0.5")
    link.cut()
    wait_cloud(hub, reachable=False)

    path = f"/api/v1/namespaces/{NS}/pods/web"
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        started = threading.Event()
        watch = pool.submit(first_watch_event, hub, SLICES + "?watch=1", PROXY, started)  # kube-proxy's, held
        assert started.wait(20)
        code, ctype, answer = kubelet(hub, "PATCH", path + "/status", running(uid, "10.244.0.9", old="10.244.0.5"))
        event = watch.result(timeout=30)
    assert event["type"] == "MODIFIED"
    assert [a for e in event["object"]["endpoints"] for a in e["addresses"]] == ["10.244.0.9"]
    assert (code, ctype) == (200, "application/json")
    assert answer["status"]["podIPs"] == [{"ip": "10.244.0.9"}]
    code, _, cached = kubelet(hub, "GET", path)
    assert code == 200 and cached == answer
    assert proxy_addresses(hub, "web") == ["10.244.0.9"]  # kube-proxy's slice follows the pod
    assert endpoints_addresses(hub, "web") == ["10.244.0.9"]  # and so do the v1 Endpoints
    assert hub.status()["outbox"]["depth"] == 1

    link.restore()
    wait_cloud(hub, reachable=True)
    wait_for(
        "the cloud's pod to show the new IP",
        lambda: cloud.kubectl.get("pod", "-n", NS, "web")["status"].get("podIP") == "10.244.0.9",
        timeout=60,
    )
    assert cloud.kubectl.get("pod", "-n", NS, "web")["metadata"]["uid"] == uid  # the same pod, not recreated
    wait_for(
        "the cloud's slice to list the new IP", lambda: slice_addresses(cloud, "web") == ["10.244.0.9"], timeout=60
    )
    wait_for("the outbox to be empty", lambda: hub.status()["outbox"]["depth"] == 0, timeout=30)


def test_a_pod_recreated_in_the_cloud_meanwhile_does_not_get_the_old_status(
    cloud: cluster.Cluster, link: relay.Relay, hub: Hub
) -> None:
    uid = online_pod(cloud, hub, "gone", "10.244.1.5")
    link.cut()
    wait_cloud(hub, reachable=False)
    path = f"/api/v1/namespaces/{NS}/pods/gone"
    assert kubelet(hub, "PATCH", path + "/status", running(uid, "10.244.1.9", old="10.244.1.5"))[0] == 200
    cloud.kubectl.run("delete", "pod", "-n", NS, "gone", "--force", "--grace-period=0")
    cloud.kubectl.apply([web_pod("gone")])  # the same name, another pod
    fresh = cloud.kubectl.get("pod", "-n", NS, "gone")["metadata"]["uid"]
    assert fresh != uid

    link.restore()
    wait_cloud(hub, reachable=True)
    wait_for("the outbox to be empty", lambda: hub.status()["outbox"]["depth"] == 0, timeout=30)
    pod = cloud.kubectl.get("pod", "-n", NS, "gone")
    assert pod["metadata"]["uid"] == fresh
    assert pod["status"].get("podIP") is None  # the old pod's status was dropped, not given to this one


def test_a_pod_deleted_in_the_cloud_meanwhile_is_not_resurrected(
    cloud: cluster.Cluster, link: relay.Relay, hub: Hub
) -> None:
    uid = online_pod(cloud, hub, "deleted", "10.244.2.5")
    link.cut()
    wait_cloud(hub, reachable=False)
    path = f"/api/v1/namespaces/{NS}/pods/deleted"
    assert kubelet(hub, "PATCH", path + "/status", running(uid, "10.244.2.9", old="10.244.2.5"))[0] == 200
    cloud.kubectl.run("delete", "pod", "-n", NS, "deleted", "--force", "--grace-period=0")

    link.restore()
    wait_cloud(hub, reachable=True)
    wait_for("the outbox to be empty", lambda: hub.status()["outbox"]["depth"] == 0, timeout=30)
    assert cloud.kubectl.run("get", "pods", "-n", NS, "deleted", "--ignore-not-found", "-o", "name") == ""
    link.cut()
    wait_cloud(hub, reachable=False)
    code, _, answer = kubelet(hub, "GET", path)  # offline the deletion is remembered, not the patched copy
    assert (code, answer.get("reason")) == (404, "NotFound")


EVENTS_BEFORE = 600
"""Events queued offline before the status: delivered first (as the outbox once did), they would keep the
status from the cloud for seconds after the watches held offline ended."""


def event(i: int, pod: str) -> bytes:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod}.{i}", "namespace": NS},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": NS, "apiVersion": "v1"},
            "reason": "Started",
            "message": f"offline event {i}",
            "type": "Normal",
            "source": {"component": "kubelet", "host": NODE},
            "count": 1,
        }
    ).encode()


def watch_until_it_ends(hub: Hub, path: str, agent: str, started: threading.Event) -> None:
    """Hold a JSON watch open through yurthub until yurthub ends it."""
    request = urllib.request.Request(hub.proxy + path, headers={"Accept": "application/json", "User-Agent": agent})
    with urllib.request.urlopen(request, timeout=60) as resp:
        started.set()
        while resp.readline():
            pass


def test_a_watch_held_offline_ends_only_once_the_cloud_has_the_pods_new_status(
    cloud: cluster.Cluster, link: relay.Relay, hub: Hub
) -> None:
    """When the link comes back kube-proxy relists from the cloud as soon as yurthub ends its watch: the
    cloud's slice must already name the pod's new address by then, not the one from before the outage."""
    uid = online_pod(cloud, hub, "late", "10.244.3.5")
    link.cut()
    wait_cloud(hub, reachable=False)
    for i in range(EVENTS_BEFORE):  # a reboot's worth of kubelet's Events, queued before the status
        code, _, _ = call(hub.proxy + f"/api/v1/namespaces/{NS}/events", method="POST", body=event(i, "late"))
        assert code == 201
    path = f"/api/v1/namespaces/{NS}/pods/late/status"
    assert kubelet(hub, "PATCH", path, running(uid, "10.244.3.9", old="10.244.3.5"))[0] == 200

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        started = threading.Event()
        watch = pool.submit(watch_until_it_ends, hub, SLICES + "?watch=1", PROXY, started)
        assert started.wait(20)
        link.restore()
        watch.result(timeout=60)
    # read the moment the watch ended: what kube-proxy's relist would build on
    assert cloud.kubectl.get("pod", "-n", NS, "late")["status"].get("podIP") == "10.244.3.9", (
        "the held watch ended before the pod's new status reached the cloud"
    )
    wait_for("the outbox to be empty", lambda: hub.status()["outbox"]["depth"] == 0, timeout=60)
