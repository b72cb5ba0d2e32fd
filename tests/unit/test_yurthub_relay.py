"""kubelet's pods are asked for as JSON with no filter (`hub.AS_JSON`) and relayed as they come, not read
whole and decoded first: through real HTTP, yurthub's plain port in front of a small aiohttp "cloud" on
loopback that sends a list in two parts and holds the second until told."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.unit.test_yurthub_bounds import _site, settings
from yurthub import cache, config, health, metrics, outbox, proxy, remote, requestinfo, server, storage, wire

KUBELET = {
    "User-Agent": "kubelet/v1.34.12 (linux/amd64) kubernetes/x",
    "Accept": f"{wire.PROTOBUF},{wire.JSON}",
    "Accept-Encoding": "gzip",
}
PATH = "/api/v1/namespaces/default/pods"


def pods_list(n: int) -> bytes:
    items = [
        {"metadata": {"name": f"p{i}", "namespace": "default", "resourceVersion": str(10 + i)}, "spec": {}}
        for i in range(n)
    ]
    doc = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "99"}, "items": items}
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


class Cloud:
    def __init__(self) -> None:
        self.second_half = asyncio.Event()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []


@pytest.fixture
async def hub_url(tmp_path: Path) -> AsyncIterator[tuple[str, Cloud, proxy.Hub]]:
    cloud = Cloud()

    async def answer(request: web.Request) -> web.StreamResponse:
        cloud.headers.append(dict(request.headers))
        compress = "gzip" in request.headers.get("Accept-Encoding", "")  # as kube-apiserver: only if asked
        body = gzip.compress(pods_list(200)) if compress else pods_list(200)
        headers = {"Content-Type": wire.JSON} | ({"Content-Encoding": "gzip"} if compress else {})
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await cloud.second_half.wait()
        await response.write(body[len(body) // 2 :])
        await response.write_eof()
        return response

    async def stream(request: web.Request) -> web.StreamResponse:
        """A watch or a followed log: headers now, data only once told (no length: a stream)."""
        cloud.headers.append(dict(request.headers))
        kind = wire.JSON if "watch" in request.query else "text/plain"
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        await cloud.second_half.wait()
        await response.write(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"5"}}}\n')
        await response.write_eof()
        return response

    async def take(request: web.Request) -> web.Response:
        """A write: what arrived, and how (length declared or chunked)."""
        cloud.headers.append(dict(request.headers))
        cloud.bodies.append(await request.read())
        return web.Response(status=201, body=b"{}", content_type=wire.JSON)

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get(PATH, answer)
    app.router.add_post("/api/v1/namespaces/default/configmaps", take)
    app.router.add_get("/api/v1/namespaces/default/configmaps", stream)
    app.router.add_get("/api/v1/namespaces/default/pods/p1/log", stream)
    cloud_runner, cloud_url = await _site(app)
    s = settings(cloud_url, tmp_path, config.LimitSettings())
    box = outbox.Outbox(tmp_path / "outbox", 10)
    async with aiohttp.ClientSession() as node_session, aiohttp.ClientSession() as token_session:
        stats = metrics.Metrics(s.cache.cache_agents)
        hub = proxy.Hub(s, health.Servers(s.cloud), storage.MemoryStorage(), box, stats, node_session, token_session)
        runner = server._proxy_runner(hub)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield f"http://127.0.0.1:{port}", cloud, hub
        finally:
            cloud.second_half.set()
            await runner.cleanup()
            await cloud_runner.cleanup()
            hub.writer.shutdown(wait=True)
            box.close()


async def test_kubelets_pod_list_streams_as_the_cloud_sends_it_and_is_cached_as_json(
    hub_url: tuple[str, Cloud, proxy.Hub],
) -> None:
    url, cloud, hub = hub_url
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url + PATH, headers=KUBELET) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == wire.JSON
        # the first half arrives while the cloud still holds the second (a bound only so that code that
        # reads the whole answer first fails here instead of hanging)
        async with asyncio.timeout(10):
            first = await resp.content.readany()
        assert first
        cloud.second_half.set()
        rest = await resp.read()
    assert gzip.decompress(first + rest) == pods_list(200)  # the cloud's bytes, as it sent them
    sent = cloud.headers[0]
    assert sent["Accept"] == wire.JSON  # asked for as JSON: what the node rewrites offline must be JSON
    assert sent["Accept-Encoding"] == "gzip"  # nothing reads it on the way: kubelet's compression stays
    key = cache.view_key(requestinfo.parse("GET", PATH, {}, KUBELET["User-Agent"]), wire.Encoding.JSON)
    for _ in range(1000):  # the cache writer keeps the list (as JSON) once it has the whole of it
        view = hub.store.read_view(key)
        if view is not None:
            break
        await asyncio.sleep(0.01)
    assert view is not None and len(view.items) == 200


async def test_a_long_request_body_goes_to_the_cloud_in_steps_with_the_loop_free_between_them() -> None:
    body = os.urandom(5 * remote.BODY_STEP + 7)
    headers: dict[str, str] = {}
    out = remote._outgoing(body, headers)
    assert headers == {"Content-Length": str(len(body))}  # declared: not sent chunked
    assert not isinstance(out, bytes | None)
    loop, slices, ran = asyncio.get_running_loop(), [], []
    async for piece in out:
        slices.append(bytes(piece))
        loop.call_soon(ran.append, len(slices))
    assert b"".join(slices) == body
    assert [len(s) for s in slices] == [remote.BODY_STEP] * 5 + [7]
    # what was ready to run after each slice ran before the next one was written: no step holds the loop
    # for more than one slice (the last one's callback has had no turn yet)
    assert ran == [1, 2, 3, 4, 5]


def test_a_short_request_body_goes_as_it_is() -> None:
    headers: dict[str, str] = {}
    assert remote._outgoing(b"x" * remote.BODY_STEP, headers) == b"x" * remote.BODY_STEP
    assert remote._outgoing(b"", headers) is None
    assert headers == {}  # aiohttp declares the length of bytes itself


async def test_a_long_body_reaches_the_cloud_whole_with_its_length_declared(
    hub_url: tuple[str, Cloud, proxy.Hub],
) -> None:
    url, cloud, _ = hub_url
    body = b'{"kind":"ConfigMap","data":{"a":"' + b"x" * (16 * 2**20 - 40) + b'"}}'
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/api/v1/namespaces/default/configmaps", data=body, headers={"Content-Type": wire.JSON}
        ) as resp,
    ):
        assert resp.status == 201
    assert cloud.bodies == [body]
    assert cloud.headers[0]["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in cloud.headers[0]
    assert cloud.headers[0]["Content-Type"] == wire.JSON


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/configmaps?watch=1",
        "/api/v1/namespaces/default/pods/p1/log?follow=true",
    ],
)
async def test_a_streams_headers_reach_the_client_before_any_data(
    hub_url: tuple[str, Cloud, proxy.Hub], path: str
) -> None:
    """A client of a watch or a followed log waits for the answer's headers before any data comes: yurthub
    sends them at once, not with the first data (which may come minutes later)."""
    url, cloud, _ = hub_url
    headers = {"User-Agent": KUBELET["User-Agent"], "Accept": wire.JSON}
    async with aiohttp.ClientSession() as session:
        # a bound only so that code holding the headers back fails here instead of hanging
        async with asyncio.timeout(10):
            resp = await session.get(url + path, headers=headers)
        async with resp:
            assert resp.status == 200
            cloud.second_half.set()
            assert b"BOOKMARK" in await resp.read()


class CountingStorage(storage.MemoryStorage):
    """The in-memory cache, counting the lists it is asked to replace."""

    def __init__(self) -> None:
        super().__init__()
        self.replaced = 0

    def replace_list(self, key: storage.ViewKey, listing: wire.ListBody) -> None:
        self.replaced += 1
        super().replace_list(key, listing)


async def test_a_list_of_the_same_objects_at_a_newer_revision_only_moves_its_view(tmp_path: Path) -> None:
    """kube-apiserver answers a LIST at its current revision, so the same objects come back with another list
    resourceVersion each time something anywhere in the cluster changed: the view moves to it without its
    objects being parsed and written again, and a change in any object is written as before."""
    state = {"rv": 100, "objects": pods_list(50)}

    async def answer(request: web.Request) -> web.Response:
        state["rv"] += 1
        body = state["objects"].replace(
            b'"metadata":{"resourceVersion":"99"}', f'"metadata":{{"resourceVersion":"{state["rv"]}"}}'.encode(), 1
        )
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(PATH, answer)
    cloud_runner, cloud_url = await _site(app)
    s = settings(cloud_url, tmp_path, config.LimitSettings())
    box = outbox.Outbox(tmp_path / "outbox", 10)
    store = CountingStorage()
    key = cache.view_key(requestinfo.parse("GET", PATH, {}, KUBELET["User-Agent"]), wire.Encoding.JSON)

    async def listed_at(rv: str, replaced: int) -> None:
        async with aiohttp.ClientSession() as session, session.get(url + PATH, headers=KUBELET) as resp:
            assert resp.status == 200 and f'"resourceVersion":"{rv}"'.encode() in await resp.read()
        for _ in range(1000):  # the cache writer's turn
            view = store.read_view(key)
            if view is not None and view.resource_version == rv and store.replaced == replaced:
                return
            await asyncio.sleep(0.01)
        raise AssertionError((rv, replaced, store.replaced, view and view.resource_version))

    async with aiohttp.ClientSession() as node_session, aiohttp.ClientSession() as token_session:
        hub = proxy.Hub(
            s, health.Servers(s.cloud), store, box, metrics.Metrics(s.cache.cache_agents), node_session, token_session
        )
        runner = server._proxy_runner(hub)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        try:
            await listed_at("101", 1)
            await listed_at("102", 1)  # the same objects: only the view's resourceVersion moved
            await listed_at("103", 1)
            state["objects"] = state["objects"].replace(b'"name":"p7"', b'"name":"p7-new"')
            await listed_at("104", 2)  # an object changed: the list is written again
            view = store.read_view(key)
            names = {wire.parse_object(wire.Encoding.JSON, b).name for b in view.items} if view else set()
            assert "p7-new" in names and "p7" not in names and len(names) == 50
        finally:
            await runner.cleanup()
            await cloud_runner.cleanup()
            hub.writer.shutdown(wait=True)
            box.close()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[]}', ("7", 70)),
        (b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","continue":"x"},"items":[]}', None),
        (b'{"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": []}', None),
        (b'{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}', None),
        (b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"extra":1,"items":[]}', None),
        (
            b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","x":"'
            + b"a" * 5000
            + b'"},"items":[]}',
            None,
        ),
        (b'{"metadata":{"resourceVersion":"7,\\"items\\":["}}', None),
        (b"garbage", None),
    ],
)
def test_only_a_whole_list_in_kube_apiservers_own_layout_has_its_head_read(body: bytes, expected: object) -> None:
    assert wire.json_list_head(body) == expected
