"""yurthub between a client and the real kube-apiserver: byte-exact online, answering from its cache offline.

The "cloud link" is a relay the test black-holes; yurthub runs from its console script as a node would.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from testenv import cluster, relay
from testenv.kubectl import wait_for
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/test"
PB = "application/vnd.kubernetes.protobuf,application/json"


def call(
    url: str,
    *,
    method: str = "GET",
    accept: str = "application/json",
    body: bytes | None = None,
    content_type: str = "application/json",
    agent: str = KUBELET,
    context: ssl.SSLContext | None = None,
    timeout: float = 15,
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method=method,
        headers={
            "Accept": accept,
            "User-Agent": agent,
            "Content-Type": content_type,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


@pytest.fixture(scope="module")
def direct(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """GETs straight to the apiserver with the same node identity yurthub uses."""
    plane = cloud.plane
    assert plane is not None
    directory = tmp_path_factory.mktemp("direct")
    cert, key = plane.ca.issue(f"system:node:{NODE}", organizations=("system:nodes",), client=True).write(
        directory, "node"
    )
    context = ssl.create_default_context(cafile=str(plane.directory / "pki" / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))

    def get(path: str, accept: str = "application/json") -> tuple[int, str, bytes]:
        return call(plane.server + path, accept=accept, context=context)

    return get


def services(cloud: cluster.Cluster, *names: str, labels: dict[str, str] | None = None) -> None:
    cloud.kubectl.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": n, "namespace": "default", "labels": labels or {"app": n}},
                "spec": {"ports": [{"port": 80}], "clusterIP": "None"},
            }
            for n in names
        ]
    )


@pytest.mark.parametrize("accept", ["application/json", PB])
def test_online_answers_are_the_apiservers_bytes(hub: Hub, direct: Any, cloud: cluster.Cluster, accept: str) -> None:
    services(cloud, "svc-a", "svc-b")
    for path in (
        "/api/v1/namespaces/default/services",
        f"/api/v1/nodes/{NODE}",
        "/api/v1/namespaces/default/services?labelSelector=app%3Dsvc-a",
    ):
        want = direct(path, accept)
        got = call(hub.proxy + path, accept=accept)
        assert got == want, path
        assert want[0] == 200


def test_offline_lists_and_gets_answer_from_the_cache_in_the_clients_encoding(
    hub: Hub, link: relay.Relay, direct: Any, cloud: cluster.Cluster
) -> None:
    services(cloud, "svc-a", "svc-b")
    paths = [
        "/api/v1/namespaces/default/services",
        "/api/v1/namespaces/default/services?labelSelector=app%3Dsvc-a",
        f"/api/v1/nodes/{NODE}",
    ]
    cloud_said: dict[tuple[str, str], tuple[int, str, bytes]] = {}
    for path in paths:
        for accept in ("application/json", PB):

            def same_as_the_cloud(path: str = path, accept: str = accept) -> bool:
                """yurthub's online answer (which it caches) is what the apiserver answers straight, byte for
                byte; asked again if a write elsewhere in the cluster moved a list's resourceVersion between."""
                cloud_said[(path, accept)] = want = direct(path, accept)
                return call(hub.proxy + path, accept=accept) == want

            wait_for(f"{path} ({accept}) through yurthub to match the cloud", same_as_the_cloud, timeout=20)
            assert cloud_said[(path, accept)][0] == 200
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        for (path, accept), want in cloud_said.items():
            got = call(hub.proxy + path, accept=accept)
            assert got[0] == 200, (path, accept, got[2][:300])
            assert got == want, (path, accept)  # what the cloud said, in the client's encoding
        items = json.loads(call(hub.proxy + paths[1])[2])["items"]
        assert [i["metadata"]["name"] for i in items] == ["svc-a"]  # the selector's own view
        code, ctype, body = call(hub.proxy + "/api/v1/namespaces/default/secrets")
        assert (code, ctype) == (503, "application/json")
        assert json.loads(body)["kind"] == "Status" and "nothing cached" in json.loads(body)["message"]
        code, _, body = call(hub.proxy + "/api/v1/namespaces/default/services", agent="curious-tool/1.0")
        assert code == 503  # not a cache agent: its reads were never cached
    finally:
        link.restore()
        wait_cloud(hub, reachable=True)


def test_offline_watch_stays_open_and_ends_cleanly_when_the_cloud_returns(hub: Hub, link: relay.Relay) -> None:
    path = "/api/v1/namespaces/default/services?watch=1&resourceVersion=0"
    call(hub.proxy + "/api/v1/namespaces/default/services")
    link.cut()
    ended: dict[str, Any] = {}
    try:
        wait_cloud(hub, reachable=False)

        def watch() -> None:
            ended["result"] = call(hub.proxy + path, timeout=60)

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(3)
        assert watcher.is_alive(), f"the offline watch ended early: {ended}"
    finally:
        link.restore()
    watcher.join(30)  # a bound so a regression fails; without the cloud's return it would run for 30 minutes
    assert not watcher.is_alive(), "the offline watch did not end when the cloud came back"
    code, ctype, body = ended["result"]
    assert (code, ctype, body) == (200, "application/json;stream=watch", b"")


def test_events_made_offline_reach_the_cloud_in_order_when_it_returns(
    hub: Hub, link: relay.Relay, cloud: cluster.Cluster
) -> None:
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        for i in range(3):
            event = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"offline-{i}", "namespace": "default"},
                "involvedObject": {"kind": "Node", "name": NODE, "apiVersion": "v1"},
                "reason": "Offline",
                "message": f"written offline {i}",
                "type": "Normal",
                "source": {"component": "kubelet", "host": NODE},
            }
            code, _, body = call(
                hub.proxy + "/api/v1/namespaces/default/events", method="POST", body=json.dumps(event).encode()
            )
            assert code == 201
            assert json.loads(body)["metadata"]["name"] == f"offline-{i}"
        assert hub.status()["outbox"]["depth"] == 3
    finally:
        link.restore()
    wait_for(
        "the offline events in the cloud",
        lambda: (
            len(
                [
                    e
                    for e in cloud.kubectl.get("events", "-n", "default")["items"]
                    if e["metadata"]["name"].startswith("offline-")
                ]
            )
            == 3
        ),
        timeout=30,
    )
    events = sorted(
        (
            e
            for e in cloud.kubectl.get("events", "-n", "default")["items"]
            if e["metadata"]["name"].startswith("offline-")
        ),
        key=lambda e: int(e["metadata"]["resourceVersion"]),
    )
    assert [e["metadata"]["name"] for e in events] == ["offline-0", "offline-1", "offline-2"]
    assert hub.status()["outbox"]["depth"] == 0


def test_objects_deleted_in_the_cloud_while_away_disappear_on_the_first_relist(
    hub: Hub, link: relay.Relay, cloud: cluster.Cluster
) -> None:
    services(cloud, "doomed", "keeper")
    path = "/api/v1/namespaces/default/services"
    assert "doomed" in call(hub.proxy + path)[2].decode()
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        cloud.kubectl.run("delete", "service", "doomed", "-n", "default")
        assert "doomed" in call(hub.proxy + path)[2].decode()  # offline: the last list the node saw
    finally:
        link.restore()
        wait_cloud(hub, reachable=True)
    assert "doomed" not in call(hub.proxy + path)[2].decode()  # relisted from the cloud
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        names = [i["metadata"]["name"] for i in json.loads(call(hub.proxy + path)[2])["items"]]
        assert "doomed" not in names and "keeper" in names
    finally:
        link.restore()
        wait_cloud(hub, reachable=True)


def test_kubelets_lease_renewal_is_answered_locally_offline(
    hub: Hub, link: relay.Relay, cloud: cluster.Cluster
) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": NODE, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40},
    }
    code, _, body = call(
        hub.proxy + "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        method="POST",
        body=json.dumps(lease).encode(),
    )
    assert code in (201, 409), body
    current = json.loads(call(hub.proxy + path)[2])
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        current["spec"]["renewTime"] = "2026-01-01T00:00:00.000000Z"
        code, _, body = call(hub.proxy + path, method="PUT", body=json.dumps(current).encode())
        assert code == 200
        assert json.loads(body)["spec"]["renewTime"] == "2026-01-01T00:00:00.000000Z"
        code, _, body = call(hub.proxy + f"/api/v1/nodes/{NODE}", method="DELETE")
        assert code == 503 and b"cannot be honoured offline" in body
    finally:
        link.restore()
        wait_cloud(hub, reachable=True)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/pods/..%2f..%2fetc",
        "/api/v1/namespaces/%2e%2e/pods",
        "/api/v1/namespaces/default/pods/" + "x" * 300,
        "/api/v1/namespaces/default/pods/a%2Fb",
    ],
)
def test_dangerous_paths_get_a_status_error_and_touch_nothing(hub: Hub, path: str) -> None:
    before = sorted(p.name for p in hub.cache.iterdir())
    code, ctype, body = call(hub.proxy + path)
    assert (code, ctype) == (400, "application/json")
    assert json.loads(body)["reason"] == "BadRequest"
    assert sorted(p.name for p in hub.cache.iterdir()) == before
    assert hub.proc.poll() is None


def test_the_cache_survives_a_restart_and_answers_offline_at_once(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    first = start_hub(cloud, link, tmp_path)
    try:
        services(cloud, "svc-a")
        want = call(first.proxy + "/api/v1/namespaces/default/services", accept=PB)
    finally:
        stop_hub(first)
    link.cut()
    try:
        second = start_hub(cloud, link, tmp_path)  # starts while the cloud is away
        try:
            wait_cloud(second, reachable=False)
            assert call(second.proxy + "/api/v1/namespaces/default/services", accept=PB) == want
        finally:
            stop_hub(second)
    finally:
        link.restore()
