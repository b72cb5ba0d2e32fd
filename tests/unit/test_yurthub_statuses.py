"""kubelet's pod status patches offline, through real HTTP: yurthub's proxy app in front of a small aiohttp
"cloud" on loopback that keeps one pod and one EndpointSlice and records what it is sent. No mocks of
yurthub's own code; the real apiserver's side is in tests/integration/test_yurthub_pod_status.py.

Covers: the offline answer (200, the whole pod as JSON, resourceVersion one past the cached one), the cache
showing it (GET, and the EndpointSlice kube-proxy reads rewritten), held watches told with MODIFIED events,
one outbox entry per pod, delivery against the cloud's current object (a conflict retried, a pod gone or
recreated dropped), and the trust rules (a pod's token, another node's pod, another component, the pod
itself rather than its status: all refused and nothing changes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.unit import wirefixtures
from tests.unit.test_yurthub_bounds import NOBODY, as_root, call_as
from yurthub import config, filters, health, metrics, outbox, proxy, server, status, storage, wire

NODE = "edge-1"
UID = "uid-web-1"
POD_PATH = "/api/v1/namespaces/shop/pods/web-1"
PODS_PATH = "/api/v1/pods"
SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"
KUBELET = {"User-Agent": "kubelet/v1.34.12 (linux/amd64) kubernetes/test", "Accept": "application/json"}
KUBE_PROXY = {"User-Agent": "kube-proxy/v1.34.12", "Accept": "application/json"}
SMP = {"Content-Type": "application/strategic-merge-patch+json"}


def pod(name: str = "web-1", node: str = NODE, ip: str = "10.0.0.5", rv: str = "100", uid: str = UID) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": rv},
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
        },
    }


def eps() -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "web-x", "namespace": "shop", "resourceVersion": "90"},
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["10.0.0.5"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": NODE,
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": UID},
            }
        ],
    }


def listing(kind: str, api_version: str, rv: str, *items: dict[str, Any]) -> bytes:
    bare = [{k: v for k, v in i.items() if k not in ("kind", "apiVersion")} for i in items]
    return json.dumps(
        {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": bare}
    ).encode()


class Cloud:
    """The fake apiserver's state: what GET answers, what PATCH answers (in order), and what it was sent."""

    def __init__(self) -> None:
        self.pod: dict[str, Any] | None = pod()
        self.patch_codes: list[int] = []
        self.patches: list[dict[str, Any]] = []
        self.gets = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == PODS_PATH:
            assert self.pod is not None
            return _json(200, listing("PodList", "v1", "120", self.pod, pod("web-2", ip="10.0.0.6", uid="u2")))
        if request.path == "/api/v1/namespaces/shop/pods/other-1":
            return _json(200, json.dumps(pod("other-1", node="edge-2", uid="u3")).encode())
        if request.path == SLICES_PATH:
            return _json(200, listing("EndpointSliceList", "discovery.k8s.io/v1", "120", eps()))
        if request.path == POD_PATH and request.method == "GET":
            self.gets += 1
            if self.pod is None:
                return _json(404, status.body(404, 'pods "web-1" not found', "NotFound"))
            return _json(200, json.dumps(self.pod).encode())
        if request.path == POD_PATH + "/status" and request.method == "PATCH":
            self.patches.append(json.loads(body))
            code = self.patch_codes.pop(0) if self.patch_codes else 200
            if code != 200:
                return _json(code, status.body(code, "the object has been modified", "Conflict"))
            assert self.pod is not None
            done = dict(self.pod, metadata=dict(self.pod["metadata"], resourceVersion="9001"))
            return _json(200, json.dumps(done).encode())
        return _json(404, status.body(404, "not found", "NotFound"))


def _json(code: int, body: bytes) -> web.Response:
    return web.Response(status=code, body=body, headers={"Content-Type": "application/json"})


class Node:
    def __init__(self, hub: proxy.Hub, url: str, cloud: Cloud, cloud_url: str, session: aiohttp.ClientSession) -> None:
        self.hub, self.url, self.cloud, self.cloud_url, self.session = hub, url, cloud, cloud_url, session

    async def call(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        async with self.session.request(method, self.url + path, headers=headers, data=body or None) as resp:
            return resp.status, json.loads(await resp.read())

    def cut(self) -> None:
        self.hub.server_failed(self.cloud_url, "cut by the test")

    def restore(self) -> None:
        for _ in range(self.hub.settings.cloud.heartbeat_healthy_threshold):
            if self.hub.servers.record(self.cloud_url, True):
                self.hub.cloud_changed()
        assert self.hub.servers.is_healthy

    async def queued(self) -> list[outbox.Write]:
        entries: list[outbox.Write] = await self.hub.in_writer(self.hub.outbox.entries)
        return entries


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    cloud = Cloud()
    cloud_app = web.Application()
    cloud_app.router.add_route("*", "/{tail:.*}", cloud.handle)
    cloud_runner, cloud_url = await _site(cloud_app)
    s = config.HubSettings(
        node_name=NODE,
        cloud=config.CloudSettings(servers=(cloud_url,), request_timeout_s=5),
        listen=config.ListenSettings(),
        cache=config.CacheSettings(disk_cache_path=str(tmp_path / "cache")),
        identity=config.IdentitySettings(ca_file="", client_cert=""),
        outbox=config.OutboxSettings(path=str(tmp_path / "outbox")),
        filters=config.FilterSettings(rules=tuple(filters.parse_rules([], ["servicetopology"]).items())),
    )
    box = outbox.Outbox(tmp_path / "outbox", 10)
    stats = metrics.Metrics(s.cache.cache_agents)
    store = storage.SqliteStorage(tmp_path / "cache.db")
    async with aiohttp.ClientSession() as node_session, aiohttp.ClientSession() as session:
        hub = proxy.Hub(s, health.Servers(s.cloud), store, box, stats, node_session, node_session)
        runner = server._proxy_runner(hub)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        n = Node(hub, url, cloud, cloud_url, session)
        try:
            # online: kubelet lists its pods and reads another node's pod; kube-proxy lists the slices
            assert (await n.call("GET", PODS_PATH + f"?fieldSelector=spec.nodeName%3D{NODE}", KUBELET))[0] == 200
            assert (await n.call("GET", "/api/v1/namespaces/shop/pods/other-1", KUBELET))[0] == 200
            assert (await n.call("GET", SLICES_PATH, KUBE_PROXY))[0] == 200
            await hub.in_writer(lambda: None)  # the cache writes queued before this one are done
            yield n
        finally:
            await runner.cleanup()
            await cloud_runner.cleanup()
            hub.writer.shutdown(wait=True)
            store.close()
            box.close()


def new_ip_patch(ip: str, old: str = "10.0.0.5", uid: str = UID) -> bytes:
    return json.dumps(
        {
            "metadata": {"uid": uid},
            "status": {
                "$setElementOrder/podIPs": [{"ip": ip}],
                "podIP": ip,
                "podIPs": [{"ip": ip}, {"$patch": "delete", "ip": old}],
            },
        }
    ).encode()


async def _watch_lines(node: Node, path: str, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    async with node.session.get(node.url + path, headers=headers) as resp:
        assert resp.status == 200
        while len(lines) < count:
            lines.append(json.loads(await resp.content.readline()))
    return lines


async def _until_held(node: Node, count: int) -> None:
    for _ in range(500):
        if len(node.hub.held) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watches were never held")


async def test_an_offline_status_patch_is_answered_cached_watched_and_rewrites_the_slice(node: Node) -> None:
    node.cut()
    pods_watch = asyncio.ensure_future(
        _watch_lines(node, PODS_PATH + f"?watch=1&fieldSelector=spec.nodeName%3D{NODE}", KUBELET, 1)
    )
    slices_watch = asyncio.ensure_future(_watch_lines(node, SLICES_PATH + "?watch=1", KUBE_PROXY, 1))
    await _until_held(node, 2)

    code, answer = await node.call("PATCH", POD_PATH + "/status", {**KUBELET, **SMP}, new_ip_patch("10.0.0.9"))
    assert code == 200
    assert answer["status"]["podIPs"] == [{"ip": "10.0.0.9"}]
    assert answer["metadata"]["resourceVersion"] == "101"
    assert answer["metadata"]["uid"] == UID

    (pod_event,) = await asyncio.wait_for(pods_watch, 10)
    assert pod_event["type"] == "MODIFIED" and pod_event["object"] == answer
    (slice_event,) = await asyncio.wait_for(slices_watch, 10)
    assert slice_event["type"] == "MODIFIED"
    assert slice_event["object"]["endpoints"][0]["addresses"] == ["10.0.0.9"]
    assert slice_event["object"]["metadata"]["resourceVersion"] == "91"

    assert (await node.call("GET", POD_PATH, KUBELET)) == (200, answer)
    code, slices = await node.call("GET", SLICES_PATH, KUBE_PROXY)
    assert code == 200 and slices["items"][0]["endpoints"][0]["addresses"] == ["10.0.0.9"]
    code, pods = await node.call("GET", PODS_PATH + f"?fieldSelector=spec.nodeName%3D{NODE}", KUBELET)
    assert [p["status"]["podIP"] for p in pods["items"]] == ["10.0.0.9", "10.0.0.6"]

    # a second patch replaces the first in the outbox; a no-op patch changes nothing
    code, answer = await node.call(
        "PATCH", POD_PATH + "/status", {**KUBELET, **SMP}, new_ip_patch("10.0.0.10", "10.0.0.9")
    )
    assert code == 200 and answer["metadata"]["resourceVersion"] == "102"
    same = json.dumps({"metadata": {"uid": UID}, "status": {"podIP": "10.0.0.10"}}).encode()
    assert (await node.call("PATCH", POD_PATH + "/status", {**KUBELET, **SMP}, same)) == (200, answer)
    queued = await node.queued()
    assert len(queued) == 1
    assert json.loads(queued[0].body)["status"]["podIP"] == "10.0.0.10"


@pytest.mark.parametrize(
    ("case", "path", "headers", "expected"),
    [
        ("a pod's token, claiming to be kubelet", POD_PATH + "/status", {"Authorization": "Bearer pod-token"}, 503),
        ("another node's pod", "/api/v1/namespaces/shop/pods/other-1/status", {}, 403),
        ("the pod itself, not its status", POD_PATH, {}, 503),
        ("another component", POD_PATH + "/status", {"User-Agent": "kube-proxy/v1.34"}, 503),
    ],
)
async def test_offline_status_writes_kubelet_may_not_make_are_refused(
    node: Node, case: str, path: str, headers: dict[str, str], expected: int
) -> None:
    node.cut()
    code, answer = await node.call("PATCH", path, {**KUBELET, **SMP, **headers}, new_ip_patch("10.6.6.6"))
    assert code == expected, case
    assert answer["kind"] == "Status"
    assert (await node.call("GET", POD_PATH, KUBELET))[1]["status"]["podIP"] == "10.0.0.5"
    assert await node.queued() == []


@as_root
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", POD_PATH + "/status", new_ip_patch("10.6.6.6")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/" + NODE, b"{}"),
    ],
)
async def test_a_local_process_of_another_uid_naming_itself_kubelet_cannot_write_offline(
    node: Node, method: str, path: str, body: bytes
) -> None:
    """kubelet's offline writes (its pods' statuses, its Lease) need the node's kubelet: a process of a uid
    not in --node-uids that sends kubelet's User-Agent is refused 403, and nothing changes; root's kubelet
    still writes."""
    node.cut()
    code, answer = await call_as(NOBODY, method, node.url + path, {**KUBELET, **SMP}, body)
    assert code == 403
    assert (answer["kind"], answer["reason"]) == ("Status", "Forbidden")
    assert "--node-uids" in str(answer["message"])
    assert (await node.call("GET", POD_PATH, KUBELET))[1]["status"]["podIP"] == "10.0.0.5"
    assert await node.queued() == []
    code, _ = await node.call(method, path, {**KUBELET, **SMP}, body)
    assert code == 200  # the node's own kubelet, from a uid of --node-uids


async def test_offline_patch_types_and_preconditions_answer_as_the_apiserver(node: Node) -> None:
    node.cut()
    merge = json.dumps({"status": {"message": "m"}}).encode()
    code, answer = await node.call(
        "PATCH", POD_PATH + "/status", {**KUBELET, "Content-Type": "application/merge-patch+json"}, merge
    )
    assert code == 200 and answer["status"]["message"] == "m"
    ops = json.dumps([{"op": "replace", "path": "/status/message", "value": "n"}]).encode()
    code, answer = await node.call(
        "PATCH", POD_PATH + "/status", {**KUBELET, "Content-Type": "application/json-patch+json"}, ops
    )
    assert code == 200 and answer["status"]["message"] == "n"
    code, answer = await node.call("PATCH", POD_PATH + "/status", {**KUBELET, "Content-Type": "text/plain"}, merge)
    assert (code, answer["reason"]) == (415, "UnsupportedMediaType")
    code, answer = await node.call("PATCH", POD_PATH + "/status", {**KUBELET, **SMP}, new_ip_patch("10.0.0.9", uid="x"))
    assert (code, answer["reason"]) == (409, "Conflict")


async def test_the_latest_status_is_delivered_against_the_clouds_pod_after_a_conflict(node: Node) -> None:
    node.cut()
    assert (await node.call("PATCH", POD_PATH + "/status", {**KUBELET, **SMP}, new_ip_patch("10.0.0.9")))[0] == 200
    assert node.cloud.pod is not None
    node.cloud.pod["metadata"]["resourceVersion"] = "5000"  # the cloud moved on meanwhile
    node.cloud.patch_codes = [409]
    node.restore()
    assert await server.deliver_once(node.hub) == 1
    assert await node.queued() == []
    assert node.cloud.gets == 2  # read again after the conflict
    last = node.cloud.patches[-1]
    assert last["metadata"] == {"uid": UID, "resourceVersion": "5000"}
    assert last["status"]["podIPs"] == [{"ip": "10.0.0.9"}, {"ip": "10.0.0.5", "$patch": "delete"}]
    scope = storage.Scope("kubelet", wire.Encoding.JSON, "pods.v1.core")
    cached = await node.hub.in_writer(node.hub.store.get_object, scope, "shop", "web-1")
    assert json.loads(cached)["metadata"]["resourceVersion"] == "9001"  # the cloud's answer replaced ours


@pytest.mark.parametrize("gone", ["deleted", "recreated"])
async def test_a_status_for_a_pod_gone_from_the_cloud_is_dropped_not_resurrected(node: Node, gone: str) -> None:
    node.cut()
    assert (await node.call("PATCH", POD_PATH + "/status", {**KUBELET, **SMP}, new_ip_patch("10.0.0.9")))[0] == 200
    node.cloud.pod = None if gone == "deleted" else pod(uid="another-uid")
    node.restore()
    assert await server.deliver_once(node.hub) == 1
    assert await node.queued() == []
    assert node.cloud.patches == []  # nothing was written to the cloud
    if gone == "deleted":
        node.cut()
        code, answer = await node.call("GET", POD_PATH, KUBELET)  # offline: the deletion is remembered
        assert (code, answer["reason"]) == (404, "NotFound")


async def test_a_pod_token_on_the_door_cannot_patch_a_pod_status_offline(node: Node) -> None:
    runner = server._door_runner(node.hub)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # the door's routing, without its TLS
    await site.start()
    door = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        node.cut()
        headers = {**KUBELET, **SMP, "Authorization": "Bearer pod-token"}  # a pod may say it is kubelet
        async with node.session.patch(door + POD_PATH + "/status", headers=headers, data=new_ip_patch("10.6.6.6")) as r:
            assert r.status == 503
            assert json.loads(await r.read())["kind"] == "Status"
    finally:
        await runner.cleanup()
    assert (await node.call("GET", POD_PATH, KUBELET))[1]["status"]["podIP"] == "10.0.0.5"
    assert await node.queued() == []


async def test_kubelets_pods_cached_as_protobuf_before_an_upgrade_still_answer_offline(node: Node) -> None:
    """A cache from before kubelet's pods were negotiated as JSON holds them in protobuf only: offline they
    are still kubelet's answer (it accepts both), not a 503."""
    pb = wirefixtures.obj(wire.Encoding.PROTOBUF, "old-1", "7", namespace="shop")
    body = wire.build_list(wire.Encoding.PROTOBUF, "v1", "PodList", "7", False, [pb.body])
    key = storage.ViewKey(
        storage.Scope("kubelet", wire.Encoding.PROTOBUF, "pods.v1.core"), "", "", "spec.nodeName=other"
    )
    await node.hub.in_writer(node.hub.store.replace_list, key, wire.parse_list(wire.Encoding.PROTOBUF, body))
    node.cut()
    headers = {**KUBELET, "Accept": "application/vnd.kubernetes.protobuf,application/json"}
    async with node.session.get(node.url + PODS_PATH + "?fieldSelector=spec.nodeName%3Dother", headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == wire.PROTOBUF
        assert await r.read() == body
