"""Offline, a GET of a ConfigMap the cloud deleted answers what the apiserver answers: its 404 `Status`, the
same bytes in the same encoding, not the stale object and not a 503.

yurthub learns of the deletion two ways, one case each: a relist through it that no longer has the object
(the view drops it and remembers it deleted), and a GET through it that the cloud answered 404. The expected
answer is the apiserver's own, captured straight from it (with the node's identity) for the same GET while
the cloud was reachable, in JSON and in protobuf (kubelet's encoding).
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv import cluster, relay
from testenv.kubectl import wait_for
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/test"
NS = "offline-404"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
ENCODINGS = {
    "json": "application/json",
    "protobuf": "application/vnd.kubernetes.protobuf,application/json",  # kubelet's Accept
}

Answer = tuple[int, str, bytes]


def call(url: str, accept: str, context: ssl.SSLContext | None = None) -> Answer:
    """One GET as kubelet: (status, Content-Type, body)."""
    request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": KUBELET})
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


@pytest.fixture(scope="module")
def direct(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A TLS context with the node's identity, to ask the apiserver straight (the `view` role lets the node
    read ConfigMaps, see conftest); and the namespace the tests use."""
    plane = cloud.plane
    assert plane is not None
    cloud.kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}])
    directory = tmp_path_factory.mktemp("direct")
    cert, key = plane.ca.issue(f"system:node:{NODE}", organizations=("system:nodes",), client=True).write(
        directory, "node"
    )
    context = ssl.create_default_context(cafile=str(plane.directory / "pki" / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture
def hub(cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path) -> Iterator[Hub]:
    h = start_hub(cloud, link, tmp_path)
    try:
        wait_cloud(h, reachable=True)
        yield h
    finally:
        stop_hub(h)
        link.restore()


def configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS}, "data": {"k": "v"}}


def tombstones(hub: Hub) -> int:
    return int(hub.status()["cache"]["counts"]["tombstones"])


def offline_get(hub: Hub, link: relay.Relay, path: str, accept: str) -> Answer:
    link.cut()
    wait_cloud(hub, reachable=False)
    return call(hub.proxy + path, accept)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_configmap_a_relist_dropped_is_the_apiservers_404_offline(
    cloud: cluster.Cluster, link: relay.Relay, direct: ssl.SSLContext, hub: Hub, encoding: str
) -> None:
    assert cloud.plane is not None
    accept, name = ENCODINGS[encoding], f"relisted-{encoding}"
    path = f"{CONFIGMAPS}/{name}"
    cloud.kubectl.apply([configmap(name)])
    assert call(hub.proxy + CONFIGMAPS, accept)[0] == 200  # kubelet's list: the view holds it
    assert call(hub.proxy + path, accept)[0] == 200
    cloud.kubectl.run("delete", "configmap", "-n", NS, name)
    expected = call(cloud.plane.server + path, accept, direct)
    assert expected[0] == 404
    held = tombstones(hub)
    assert call(hub.proxy + CONFIGMAPS, accept)[0] == 200  # the relist no longer has it
    wait_for("the relist to be stored", lambda: tombstones(hub) > held, timeout=20, interval=0.1)
    assert offline_get(hub, link, path, accept) == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_configmap_a_get_found_gone_is_the_apiservers_404_offline(
    cloud: cluster.Cluster, link: relay.Relay, direct: ssl.SSLContext, hub: Hub, encoding: str
) -> None:
    assert cloud.plane is not None
    accept, name = ENCODINGS[encoding], f"got-{encoding}"
    path = f"{CONFIGMAPS}/{name}"
    cloud.kubectl.apply([configmap(name)])
    assert call(hub.proxy + path, accept)[0] == 200  # only ever read by GET: cached, in no list
    cloud.kubectl.run("delete", "configmap", "-n", NS, name)
    expected = call(cloud.plane.server + path, accept, direct)
    assert expected[0] == 404
    held = tombstones(hub)
    assert call(hub.proxy + path, accept) == expected  # online: the cloud's 404, relayed as it came
    wait_for("the 404 to be remembered", lambda: tombstones(hub) > held, timeout=20, interval=0.1)
    assert offline_get(hub, link, path, accept) == expected
