"""Bounds of the request path under hostile input, through real HTTP: yurthub's proxy app in front of a small
aiohttp "cloud" on loopback (it answers every API request with a 404 Status, as kube-apiserver does for
made-up resources). No socket beyond 127.0.0.1, no mocks of yurthub's own code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import string
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import yarl
from aiohttp import web
from prometheus_client import generate_latest

from yurthub import (
    budget,
    cache,
    cli,
    config,
    filters,
    health,
    metrics,
    outbox,
    proxy,
    server,
    status,
    storage,
    topology,
    wire,
)


def settings(cloud: str, tmp_path: Path, limits: config.LimitSettings) -> config.HubSettings:
    return config.HubSettings(
        node_name="edge-1",
        cloud=config.CloudSettings(servers=(cloud,), request_timeout_s=5),
        listen=config.ListenSettings(),
        cache=config.CacheSettings(disk_cache_path=str(tmp_path / "cache")),
        identity=config.IdentitySettings(ca_file="", client_cert=""),
        outbox=config.OutboxSettings(path=str(tmp_path / "outbox")),
        filters=config.FilterSettings(rules=tuple(filters.parse_rules([]).items())),
        limits=limits,
    )


class Node:
    """yurthub's plain port (real routing, real sessions) and the fake cloud behind it."""

    def __init__(self, hub: proxy.Hub, url: str, seen: list[bytes]) -> None:
        self.hub = hub
        self.url = url
        self.seen = seen
        """Request bodies the cloud received."""


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
def limits() -> config.LimitSettings:
    return config.LimitSettings()


@pytest.fixture
def answers() -> dict[str, tuple[bytes, str]]:
    """Paths the cloud answers 200 to, with this body and content type (everything else: 404)."""
    return {}


@pytest.fixture
def gate() -> asyncio.Event:
    """The cloud holds every request whose path ends in `/stall` until this is set."""
    return asyncio.Event()


@pytest.fixture
async def node(
    tmp_path: Path, limits: config.LimitSettings, answers: dict[str, tuple[bytes, str]], gate: asyncio.Event
) -> AsyncIterator[Node]:
    seen: list[bytes] = []

    async def cloud_answer(request: web.Request) -> web.Response:
        seen.append(await request.read())
        if request.path.endswith("/stall"):
            await gate.wait()
        key = request.path + ("?watch" if "watch" in request.query else "")
        if key in answers:
            body, ctype = answers[key]
            return web.Response(body=body, headers={"Content-Type": ctype})
        return web.Response(status=404, body=status.body(404, "not found"), content_type="application/json")

    cloud_app = web.Application()
    cloud_app.router.add_route("*", "/{tail:.*}", cloud_answer)
    cloud_runner, cloud_url = await _site(cloud_app)
    s = settings(cloud_url, tmp_path, limits)
    box = outbox.Outbox(tmp_path / "outbox", 10)
    stats = metrics.Metrics(s.cache.cache_agents)
    async with aiohttp.ClientSession() as node_session, aiohttp.ClientSession() as token_session:
        hub = proxy.Hub(s, health.Servers(s.cloud), storage.MemoryStorage(), box, stats, node_session, token_session)
        runner = server._proxy_runner(hub)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield Node(hub, f"http://127.0.0.1:{port}", seen)
        finally:
            gate.set()
            await runner.cleanup()
            await cloud_runner.cleanup()
            hub.writer.shutdown(wait=True)
            box.close()


def series(stats: metrics.Metrics) -> int:
    return sum(
        1
        for family in stats.registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created") and family.name.startswith("yurthub_request")
    )


def word(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


async def test_request_metric_series_stay_flat_under_random_paths_verbs_and_user_agents(node: Node) -> None:
    rng = random.Random(7)  # noqa: S311 - made-up names, not secrets
    # aiohttp's parser refuses methods it does not know before yurthub sees them; these it lets through
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "MKCOL", "LOCK", "REPORT", "SEARCH"]
    sem = asyncio.Semaphore(32)

    async def one(session: aiohttp.ClientSession) -> None:
        method = rng.choice(methods)
        group = rng.choice(["/api/v1", f"/apis/{word(rng)}.io/v1"])
        path = f"{group}/namespaces/{word(rng)}/{word(rng)}"
        headers = {"User-Agent": f"{word(rng)}/v1.0", "Accept": "application/json"}
        async with sem, session.request(method, node.url + path, headers=headers) as resp:
            await resp.read()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(500)))
        after_some = series(node.hub.metrics)
        await asyncio.gather(*(one(session) for _ in range(9500)))
    # 10,000 requests, each with its own made-up resource, method and User-Agent: the series are those of
    # the closed label sets (`other` for all of them), as many after the last request as after the 500th.
    assert series(node.hub.metrics) == after_some
    assert after_some < 50


def test_labels_map_onto_closed_sets() -> None:
    labels = metrics.Labels(["my-agent", "*"])
    assert labels.component("kubelet") == "kubelet"
    assert labels.component("my-agent") == "my-agent"
    assert labels.component("made-up") == metrics.OTHER
    assert labels.component("token/" + "0" * 40) == metrics.POD
    assert labels.verb("list") == "list"
    assert labels.verb("brew") == metrics.OTHER
    assert labels.resource("pods") == "pods"
    assert labels.resource("widgets") == metrics.OTHER


async def test_last_lists_keeps_the_most_recently_used_digests_up_to_its_cap(tmp_path: Path) -> None:
    limits = config.LimitSettings(max_list_digests=100)
    s = settings("http://127.0.0.1:1", tmp_path, limits)
    box = outbox.Outbox(tmp_path / "outbox", 10)
    async with aiohttp.ClientSession() as session:
        hub = proxy.Hub(s, health.Servers(s.cloud), storage.MemoryStorage(), box, metrics.Metrics(), session, session)
        assert hub.list_changed("kept", b"list")
        for i in range(10_000):
            assert hub.list_changed(("view", i), b"list")
            if i % 50 == 0:
                assert not hub.list_changed("kept", b"list")  # used again: stays
        assert len(hub.last_lists) == 100
        assert not hub.list_changed("kept", b"list")
        assert hub.list_changed(("view", 0), b"list")  # forgotten: written again, which is safe
        hub.writer.shutdown(wait=True)
    box.close()


async def test_a_list_of_a_view_the_storage_removed_is_stored_again_though_unchanged(tmp_path: Path) -> None:
    s = settings("http://127.0.0.1:1", tmp_path, config.LimitSettings())
    box = outbox.Outbox(tmp_path / "outbox", 10)
    store = storage.MemoryStorage(max_views_per_scope=1)
    scope = storage.Scope("kubelet", wire.Encoding.JSON, "configmaps.v1.core")
    first, second = storage.ViewKey(scope, "a"), storage.ViewKey(scope, "b")
    body = _configmap_list(1)
    async with aiohttp.ClientSession() as session:
        hub = proxy.Hub(s, health.Servers(s.cloud), store, box, metrics.Metrics(), session, session)
        assert hub.list_changed(first, body)
        store.replace_list(first, wire.parse_list(wire.Encoding.JSON, body))
        assert not hub.list_changed(first, body)  # the same bytes again: not written again
        assert hub.list_changed(second, body)
        store.replace_list(second, wire.parse_list(wire.Encoding.JSON, body))
        assert store.read_view(first) is None  # evicted by the second view (one view per scope)
        assert hub.list_changed(first, body)  # the same bytes as last time, but the view is gone: store it
        hub.writer.shutdown(wait=True)
    box.close()


def test_a_budget_refuses_past_its_capacity_and_a_hold_gives_everything_back() -> None:
    b = budget.Budget(100)
    first, second = b.hold(), b.hold()
    assert first.grow(60)
    assert not second.grow(41)
    assert second.grow(40)
    assert b.held == 100
    first.release()
    first.release()
    assert b.held == 40
    later = second.handover()
    second.release()
    assert b.held == 40
    later.release()
    assert b.held == 0


@pytest.mark.parametrize("limits", [config.LimitSettings(max_bytes_in_memory=64 * 1024)])
async def test_a_body_past_the_node_wide_memory_budget_gets_429_with_retry_after(node: Node) -> None:
    async with aiohttp.ClientSession() as session:
        small = b"x" * 1000
        async with session.post(node.url + "/api/v1/namespaces/default/configmaps", data=small) as resp:
            assert resp.status == 404  # forwarded: the cloud's answer
        big = b"x" * (128 * 1024)
        async with session.post(node.url + "/api/v1/namespaces/default/configmaps", data=big) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            doc = json.loads(await resp.read())
            assert (doc["kind"], doc["reason"]) == ("Status", "TooManyRequests")
    assert node.seen == [small]
    assert node.hub.requests_budget.held == 0


@pytest.mark.parametrize("limits", [config.LimitSettings(max_request_body=4096)])
async def test_a_streamed_body_past_the_limit_gets_413(node: Node) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1024

    url = node.url + "/api/v1/namespaces/default/configmaps"
    async with aiohttp.ClientSession() as session, session.post(url, data=chunks()) as resp:
        assert resp.status == 413
        assert json.loads(await resp.read())["kind"] == "Status"
    assert node.seen == []
    assert node.hub.requests_budget.held == 0


async def test_two_authorization_headers_are_refused(node: Node) -> None:
    headers = aiohttp.typedefs.CIMultiDict([("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    url = node.url + "/api/v1/namespaces/default/pods"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 400
        assert "more than one Authorization" in json.loads(await resp.read())["message"]
    assert node.seen == []


async def test_a_failed_topology_fetch_backs_off_instead_of_refetching_on_every_request() -> None:
    calls: list[str] = []
    now = [1000.0]

    async def fetch(path: str) -> bytes | None:
        calls.append(path)
        return None

    async def in_store(fn: object, *args: object) -> object:
        return fn(*args)  # type: ignore[operator]

    source = topology.FactsSource("edge-1", "pool", storage.MemoryStorage(), fetch, in_store, clock=lambda: now[0])
    for _ in range(100):
        assert await source.get() is None
    first = len(calls)
    assert 0 < first <= 2  # one attempt (the node, then the Services)
    now[0] += topology.BACKOFF_S + 0.01
    await source.get()
    assert len(calls) == 2 * first  # retried once the backoff passed
    for _ in range(100):
        await source.get()
    assert len(calls) == 2 * first  # and the next wait is longer still
    now[0] += topology.TTL_S
    await source.get()
    assert len(calls) == 3 * first


SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
SERVICES = "/api/v1/services"
KUBE_PROXY = {"User-Agent": "kube-proxy/v1.34", "Accept": "application/json"}


def _slice_list() -> bytes:
    item = {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "s", "namespace": "default", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "elsewhere"}],
    }
    doc = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {}, "items": [item]}
    return json.dumps(doc).encode()


@pytest.mark.parametrize("answers", [{SLICES: (_slice_list(), "application/json")}])
async def test_without_topology_facts_endpointslices_fail_closed(node: Node) -> None:
    # The cloud lists EndpointSlices but answers 404 for this node and its Services, so servicetopology
    # has no facts: the slices are not sent unfiltered.
    async with aiohttp.ClientSession() as session, session.get(node.url + SLICES, headers=KUBE_PROXY) as resp:
        body = await resp.read()
        assert resp.status == 503, body
        assert resp.headers["Retry-After"] == "1"
        assert b"10.0.0.1" not in body
        assert json.loads(body)["kind"] == "Status"


@pytest.mark.parametrize("answers", [{SERVICES: (b'{"kind":"ServiceList","items":[{"metadata":', "application/json")}])
async def test_a_list_its_filters_cannot_read_is_an_error_not_the_raw_body(node: Node) -> None:
    async with aiohttp.ClientSession() as session, session.get(node.url + SERVICES, headers=KUBE_PROXY) as resp:
        body = await resp.read()
        assert resp.status == 502
        assert json.loads(body)["kind"] == "Status"
        assert b"ServiceList" not in body


@pytest.mark.parametrize("answers", [{SERVICES: (b"k8s\x00\x0a\x02v1", "application/vnd.kubernetes.protobuf")}])
async def test_a_filtered_answer_that_is_not_json_is_an_error_not_the_raw_body(node: Node) -> None:
    async with aiohttp.ClientSession() as session, session.get(node.url + SERVICES, headers=KUBE_PROXY) as resp:
        assert resp.status == 502
        assert json.loads(await resp.read())["kind"] == "Status"


GOOD_EVENT = (
    b'{"type":"ADDED","object":{"kind":"Service","apiVersion":"v1","metadata":{"name":"a","namespace":"x",'
    b'"resourceVersion":"5"},"spec":{}}}\n'
)


@pytest.mark.parametrize(
    "answers",
    [{SERVICES + "?watch": (GOOD_EVENT + b'{"type":"ADDED","object":{"kind":"Service" oops}\n', "application/json")}],
)
async def test_a_watch_event_its_filters_cannot_read_ends_the_watch_with_410(node: Node) -> None:
    url = node.url + SERVICES + "?watch=true"
    async with aiohttp.ClientSession() as session, session.get(url, headers=KUBE_PROXY) as resp:
        assert resp.status == 200
        lines = (await resp.read()).splitlines()
    assert lines[0] == GOOD_EVENT.rstrip()
    assert len(lines) == 2
    last = json.loads(lines[1])
    assert last["type"] == "ERROR"
    assert (last["object"]["code"], last["object"]["reason"]) == (410, "Expired")


CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def _configmap_list(count: int) -> bytes:
    items = [
        {"metadata": {"name": f"c{i}", "namespace": "default", "resourceVersion": "9"}, "data": {"k": "v" * 100}}
        for i in range(count)
    ]
    doc = {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}, "items": items}
    return json.dumps(doc).encode()


async def _list_as_kubelet(node: Node) -> bytes:
    headers = {"User-Agent": "kubelet/v1.34", "Accept": "application/json"}
    async with aiohttp.ClientSession() as session, session.get(node.url + CONFIGMAPS, headers=headers) as resp:
        assert resp.status == 200
        body = await resp.read()
    if node.hub.pending:
        await asyncio.wait(set(node.hub.pending))
    return body


def _view(node: Node) -> storage.View | None:
    scope = storage.Scope("kubelet", wire.Encoding.JSON, "configmaps.v1.core")
    return node.hub.store.read_view(storage.ViewKey(scope, "default"))


async def _until(check: Callable[[], bool], what: str) -> None:
    """Wait for `check` (the cache's bookkeeping of a list runs after the client has the whole answer)."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


@pytest.mark.parametrize("answers", [{CONFIGMAPS: (_configmap_list(50), "application/json")}])
async def test_a_list_within_the_buffer_budget_is_cached(node: Node) -> None:
    assert await _list_as_kubelet(node) == _configmap_list(50)
    await _until(lambda: _view(node) is not None, "the list cached")
    view = _view(node)
    assert view is not None and len(view.items) == 50
    await _until(lambda: node.hub.lists_budget.held == 0, "the list's buffer given back")


@pytest.mark.parametrize("answers", [{CONFIGMAPS: (_configmap_list(50), "application/json")}])
@pytest.mark.parametrize("limits", [config.LimitSettings(max_list_buffer_bytes=2048)])
async def test_a_list_past_the_node_wide_buffer_budget_is_relayed_whole_but_not_cached(node: Node) -> None:
    assert await _list_as_kubelet(node) == _configmap_list(50)
    overloaded = 'yurthub_overload_total{budget="lists"} 1.0'
    await _until(lambda: overloaded in generate_latest(node.hub.metrics.registry).decode(), "the budget refusal")
    await _until(lambda: node.hub.lists_budget.held == 0 and not node.hub.pending, "the bookkeeping over")
    assert _view(node) is None


@pytest.mark.parametrize("app", ["plain", "door"])
async def test_an_encoded_newline_in_the_path_is_yurthubs_400_status(node: Node, app: str) -> None:
    # aiohttp decodes `%0a` before routing; a route that does not match a newline leaves aiohttp's own
    # plain-text 404, which no Kubernetes client can parse, and yurthub never sees the request
    runner = server._proxy_runner(node.hub) if app == "plain" else server._door_runner(node.hub)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # the door's routing without its TLS
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    headers = {"User-Agent": "kubelet/v1.34", "Authorization": "Bearer pod-token"}
    path = "/api/v1/namespaces/default/configmaps/x%0aforged=1"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(yarl.URL(f"http://127.0.0.1:{port}{path}", encoded=True), headers=headers) as resp,
        ):
            assert resp.status == 400
            doc = json.loads(await resp.read())
    finally:
        await runner.cleanup()
    assert (doc["kind"], doc["code"], doc["reason"]) == ("Status", 400, "BadRequest")
    assert node.seen == []  # nothing reached the cloud


STALL = "/api/v1/namespaces/default/configmaps/stall"
OTHER = {"User-Agent": "curl/8.0"}
KUBELET = {"User-Agent": "kubelet/v1.34"}


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in 10 s")


async def held_other(session: aiohttp.ClientSession, node: Node) -> None:
    """One `other` request that holds its seat until the cloud lets it go (the test sets `gate`)."""
    async with session.get(node.url + STALL, headers=OTHER) as resp:
        assert resp.status == 404  # once the cloud lets it go


@pytest.mark.parametrize("limits", [config.LimitSettings(max_inflight_other=1)])
async def test_past_the_other_limit_429_at_once_while_kubelet_is_answered(node: Node, gate: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        async with asyncio.TaskGroup() as group:
            group.create_task(held_other(session, node), name="held-other-request")
            # the seat is taken before the request reaches the cloud: wait for both, or the held request's
            # late arrival would count as one of the refused ones (it did under Python 3.12's scheduling)
            await until(lambda: node.hub.seats.inflight["other"] == 1 and len(node.seen) == 1)
            seen = len(node.seen)
            path = node.url + "/api/v1/namespaces/default/configmaps/a"
            async with session.post(path, data=b"x" * 1000, headers=OTHER) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "1"
                doc = json.loads(await resp.read())
                assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "TooManyRequests", 429)
                assert "other" in doc["message"]
            # kubelet with a token of its own is not the node: refused too
            async with session.get(path, headers={**KUBELET, "Authorization": "Bearer pod-token"}) as resp:
                assert resp.status == 429
            assert len(node.seen) == seen  # neither reached the cloud
            for _ in range(5):  # the node's own component is answered (the cloud's 404), never refused
                async with session.get(path, headers=KUBELET) as resp:
                    assert resp.status == 404
            # a watch takes no seat
            async with session.get(path.rsplit("/", 1)[0] + "?watch=1", headers=OTHER) as resp:
                assert resp.status == 404
            text = generate_latest(node.hub.metrics.registry).decode()
            assert 'yurthub_inflight_refused_total{class="other",reason="class"} 2.0' in text
            assert 'yurthub_inflight_requests{class="other"} 1.0' in text
            gate.set()
        await until(lambda: node.hub.seats.inflight["other"] == 0)
        async with session.get(path, headers=OTHER) as resp:
            assert resp.status == 404
    assert node.hub.seats.inflight == {"node": 0, "pod": 0, "other": 0}


NOBODY = 65534
_CLIENT = """
import json, sys, urllib.error, urllib.request
method, url, headers, body = json.loads(sys.stdin.read())
request = urllib.request.Request(url, data=body.encode() or None, method=method, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=60) as resp:
        code, text = resp.status, resp.read()
except urllib.error.HTTPError as exc:
    code, text = exc.code, exc.read()
print(json.dumps([code, text.decode()]))
"""
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a client process of another uid")
"""For tests of a client of another uid (the tests run as root; test_yurthub_peers covers one's own uid)."""


async def call_as(
    user: int, method: str, url: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, object]]:
    """One HTTP request from a separate process running as `user` (another local process, as the kernel
    sees it), and its answer's code and JSON body. The system's python: the virtualenv's interpreter may
    sit where that user cannot read it."""
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3",
        "-c",
        _CLIENT,
        user=user,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(json.dumps([method, url, headers, body.decode()]).encode())
    assert proc.returncode == 0, out
    code, text = json.loads(out)
    return code, json.loads(text)


@as_root
@pytest.mark.parametrize("limits", [config.LimitSettings(max_inflight_other=1)])
async def test_a_local_process_of_another_uid_naming_itself_kubelet_is_bounded_as_other(
    node: Node, gate: asyncio.Event
) -> None:
    """Any local process can send kubelet's User-Agent: one not running as a node uid (`--node-uids`) is
    `other`, served while its class has room and refused past it, while root's kubelet is never refused."""
    path = node.url + "/api/v1/namespaces/default/configmaps/a"
    assert (await call_as(NOBODY, "GET", path, KUBELET))[0] == 404  # served (the cloud's 404): bounded, not banned

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        group.create_task(held_other(session, node), name="held-other-request")
        await until(lambda: node.hub.seats.inflight["other"] == 1 and len(node.seen) == 2)
        code, doc = await call_as(NOBODY, "GET", path, KUBELET)
        assert code == 429
        assert (doc["kind"], doc["reason"]) == ("Status", "TooManyRequests")
        assert len(node.seen) == 2  # it never reached the cloud
        async with session.get(path, headers=KUBELET) as resp:  # root's kubelet: the node's, never limited
            assert resp.status == 404
        text = generate_latest(node.hub.metrics.registry).decode()
        assert 'yurthub_inflight_refused_total{class="other",reason="class"} 1.0' in text
        assert 'yurthub_peer_lookup_failures_total{reason="refused"} 0.0' in text
        gate.set()


@pytest.mark.parametrize("limits", [config.LimitSettings(max_inflight_other=1, node_uids=frozenset({NOBODY}))])
async def test_node_uids_decides_who_is_the_node_not_the_user_agent(node: Node, gate: asyncio.Event) -> None:
    """With --node-uids naming another user, this process's kubelet (root, or whoever runs the tests) is
    `other`: refused past the class's limit like any other local client."""

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        group.create_task(held_other(session, node), name="held-other-request")
        await until(lambda: node.hub.seats.inflight["other"] == 1 and len(node.seen) == 1)
        async with session.get(node.url + "/api/v1/namespaces/default/configmaps/a", headers=KUBELET) as resp:
            assert resp.status == 429
        gate.set()


@as_root
@pytest.mark.parametrize("answers", [{CONFIGMAPS: (_configmap_list(5), "application/json")}])
async def test_a_local_process_of_another_uid_naming_itself_kubelet_cannot_evict_kubelets_views(node: Node) -> None:
    """A scope keeps a few views, the least recently used going first: a process of another uid sending
    kubelet's User-Agent with new selectors would push kubelet's own views out (offline, kubelet would
    find nothing). Its lists are answered, but not kept in kubelet's scope."""
    node.hub.store = storage.MemoryStorage(max_views_per_scope=2)
    assert await _list_as_kubelet(node) == _configmap_list(5)
    await _until(lambda: _view(node) is not None, "kubelet's own list cached")
    headers = {"User-Agent": "kubelet/v1.34", "Accept": "application/json"}
    for selector in ("a%3Db", "c%3Dd", "e%3Df"):
        code, doc = await call_as(NOBODY, "GET", f"{node.url}{CONFIGMAPS}?labelSelector={selector}", headers)
        assert (code, len(doc["items"])) == (200, 5)  # answered all the same
    await _until(lambda: not node.hub.pending, "the cache writer idle")
    assert node.hub.store.counts().views == 1  # kubelet's own view (below), and only it
    view = _view(node)
    assert view is not None and len(view.items) == 5


@pytest.mark.parametrize("answers", [{CONFIGMAPS: (_configmap_list(5), "application/json")}])
@pytest.mark.parametrize("limits", [config.LimitSettings(node_uids=frozenset({NOBODY}))])
async def test_what_a_client_not_of_the_node_uids_lists_is_not_kept_in_a_cache_agents_scope(node: Node) -> None:
    """The same rule without a second user: with --node-uids naming another, this process's kubelet is not
    the node's, so its list is relayed but not kept; a pod's token scope is kept whoever sends it."""
    assert await _list_as_kubelet(node) == _configmap_list(5)
    await _until(lambda: not node.hub.pending and node.hub.lists_budget.held == 0, "the relay's bookkeeping over")
    assert _view(node) is None
    headers = {"User-Agent": "kubelet/v1.34", "Accept": "application/json", "Authorization": "Bearer t0ken"}
    async with aiohttp.ClientSession() as session, session.get(node.url + CONFIGMAPS, headers=headers) as resp:
        assert resp.status == 200
    scope = storage.Scope(cache.token_scope("t0ken"), wire.Encoding.JSON, "configmaps.v1.core")
    await _until(
        lambda: node.hub.store.read_view(storage.ViewKey(scope, "default")) is not None, "the token's list kept"
    )


@pytest.mark.parametrize("limits", [config.LimitSettings(max_inflight_other=1)])
async def test_a_client_gone_mid_body_gives_its_seat_back(node: Node) -> None:
    never = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 100
        await never.wait()

    async def post() -> None:
        async with aiohttp.ClientSession() as session:
            await session.post(node.url + "/api/v1/namespaces/default/configmaps", data=body(), headers=OTHER)

    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.TaskGroup() as group:
            sender = group.create_task(post(), name="body-sender")
            await until(lambda: node.hub.seats.inflight["other"] == 1)
            sender.cancel()  # the client goes away mid-body
    # the client's connection is closed: yurthub's body read fails and the seat comes back
    await until(lambda: node.hub.seats.inflight["other"] == 0)
    assert node.hub.requests_budget.held == 0
    async with (
        aiohttp.ClientSession() as session,
        session.get(node.url + "/api/v1/namespaces/default/configmaps/a", headers=OTHER) as resp,
    ):
        assert resp.status == 404


@pytest.mark.parametrize("limits", [config.LimitSettings(max_inflight_pod=1, max_inflight_other=1)])
async def test_past_the_pod_limit_the_door_gets_429_while_the_plain_port_is_served(
    node: Node, gate: asyncio.Event
) -> None:
    runner = server._door_runner(node.hub)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # the door's routing without its TLS
    await site.start()
    door_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    pod = {"User-Agent": "kubelet/v1.34", "Authorization": "Bearer pod-token"}  # a pod may say it is kubelet
    path = "/api/v1/namespaces/default/configmaps/a"

    async def held() -> None:
        async with session.get(door_url + STALL, headers=pod) as resp:
            assert resp.status == 404

    try:
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
            group.create_task(held(), name="held-pod-request")
            await until(lambda: node.hub.seats.inflight["pod"] == 1)
            async with session.get(door_url + path, headers=pod) as resp:
                assert resp.status == 429
                assert json.loads(await resp.read())["reason"] == "TooManyRequests"
            async with session.get(node.url + path, headers=KUBELET) as resp:
                assert resp.status == 404  # the node's component: the cloud's answer
            async with session.get(node.url + path, headers=OTHER) as resp:
                assert resp.status == 404  # the other class has its own seats
            gate.set()
    finally:
        await runner.cleanup()
    assert (
        'yurthub_inflight_refused_total{class="pod",reason="class"} 1.0'
        in generate_latest(node.hub.metrics.registry).decode()
    )
    assert node.hub.seats.inflight == {"node": 0, "pod": 0, "other": 0}


async def _status_lines(hub: proxy.Hub, capsys: pytest.CaptureFixture[str]) -> str:
    """What `yurthub status` prints about the limits, from a report with this hub's limits section served
    on loopback (the rest of the report is left empty)."""
    report = {
        "node": "edge-1",
        "cloud": {"reachable": True, "since": ""},
        "servers": [],
        "cache": {"path": "", "writable": True, "entries": []},
        "limits": {
            "memoryHeld": server.memory_held(hub),
            "memoryCaps": {"requests": 1, "lists": 1},
            "listDigests": 0,
            "listDigestsCap": 1,
            "inflight": server.inflight_report(hub),
        },
        "outbox": {"depth": 0, "capacity": 1, "dropped": 0, "oldest": []},
    }

    async def answer(_r: web.Request) -> web.Response:
        return web.json_response(report)

    app = web.Application()
    app.router.add_get("/v1/status", answer)
    runner, url = await _site(app)
    try:
        assert await asyncio.to_thread(cli.status_main, ["--serve-address", url.removeprefix("http://")]) == 0
    finally:
        await runner.cleanup()
    return capsys.readouterr().out


@pytest.mark.parametrize("limits", [config.LimitSettings(max_inflight_pod=8, max_inflight_per_pod=2)])
async def test_one_pod_past_its_share_of_the_door_cannot_starve_another_pod_nor_kubelet(
    node: Node, gate: asyncio.Event, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod holding its share (by its address, or by its token from any address) gets 429 with Retry-After;
    another pod, with its own address and token, still gets the cloud's answer, and so does kubelet on the
    plain port, which the door's shares never count."""
    runner = server._door_runner(node.hub)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # the door's routing without its TLS
    await site.start()
    door_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    path = "/api/v1/namespaces/default/configmaps/a"

    def bearer(token: str) -> dict[str, str]:
        return {"User-Agent": "kubelet/v1.34", "Authorization": f"Bearer {token}"}

    def from_address(address: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), force_close=True))

    async def held() -> None:
        async with hostile.get(door_url + STALL, headers=bearer("hostile")) as resp:
            assert resp.status == 404  # once the cloud lets it go

    try:
        async with (
            from_address("127.0.0.1") as hostile,
            from_address("127.0.0.2") as elsewhere,
            from_address("127.0.0.3") as other_pod,
            aiohttp.ClientSession() as plain,
            asyncio.TaskGroup() as group,
        ):
            for i in range(2):
                group.create_task(held(), name=f"held-hostile-{i}")
            await until(lambda: node.hub.seats.inflight["pod"] == 2 and len(node.seen) == 2)
            refusals = [
                (hostile, "hostile"),  # the same address, the same token
                (hostile, "made-up-token"),  # the same address with a token it made up
                (elsewhere, "hostile"),  # the same token from another address
            ]
            for session, token in refusals:
                async with session.get(door_url + path, headers=bearer(token)) as resp:
                    assert resp.status == 429
                    assert resp.headers["Retry-After"] == "1"
                    doc = json.loads(await resp.read())
                    assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "TooManyRequests", 429)
                    assert "this pod" in doc["message"]
            assert len(node.seen) == 2  # no refused request reached the cloud
            for _ in range(3):  # another pod, its own address and token: the cloud's answer, every time
                async with other_pod.get(door_url + path, headers=bearer("other-pod")) as resp:
                    assert resp.status == 404
            for _ in range(20):  # kubelet on the plain port is never counted against the door's shares
                async with plain.get(node.url + path, headers=KUBELET) as resp:
                    assert resp.status == 404
            inflight = server.inflight_report(node.hub)  # what `yurthub status` shows
            assert (inflight["perClientCap"], inflight["busiestClient"]) == (2, 2)
            printed = await _status_lines(node.hub, capsys)
            assert "pod 2/8" in printed and "busiest door client 2/2" in printed
            gate.set()
    finally:
        await runner.cleanup()
    text = generate_latest(node.hub.metrics.registry).decode()
    assert 'yurthub_inflight_refused_total{class="pod",reason="client"} 3.0' in text
    assert 'yurthub_inflight_refused_total{class="pod",reason="class"}' not in text
    assert node.hub.seats.inflight == {"node": 0, "pod": 0, "other": 0}
    assert node.hub.seats.clients == {}  # nobody in flight: nobody remembered


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"\x8c\x01garbage"),
        ("application/merge-patch+json; charset=utf-8", b"  <xml/>"),
        ("application/strategic-merge-patch+json", b"\x00{}"),
        (wire.PROTOBUF, b'{"kind":"ConfigMap"}'),
    ],
)
async def test_a_body_that_is_not_what_its_content_type_says_is_refused_before_it_is_read(
    node: Node, content_type: str, body: bytes
) -> None:
    never = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield body
        # the rest is held back until the answer came (a bound only so that code that waits for the whole
        # body forwards it and fails the assertions below instead of hanging)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(never.wait(), 10)
        yield b"{}"

    url = node.url + "/api/v1/namespaces/default/configmaps"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=chunks(), headers={"Content-Type": content_type, **OTHER}) as resp:
            assert resp.status == 400
            doc = json.loads(await resp.read())
            assert (doc["kind"], doc["reason"]) == ("Status", "BadRequest")
            assert "Content-Type" in doc["message"]
        never.set()
    assert node.seen == []
    assert node.hub.requests_budget.held == 0
    assert node.hub.seats.inflight["other"] == 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b' \n{"kind":"ConfigMap"}'),
        ("application/json-patch+json", b'[{"op":"remove","path":"/a"}]'),
        (wire.PROTOBUF, wire.MAGIC + b"\x0a\x00"),
        ("application/apply-patch+yaml", b"\x8cnot checked: YAML is the cloud's to judge"),
        ("application/json", b"   "),
    ],
)
async def test_a_body_that_may_be_what_its_content_type_says_is_forwarded(
    node: Node, content_type: str, body: bytes
) -> None:
    url = node.url + "/api/v1/namespaces/default/configmaps"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": content_type}) as resp,
    ):
        assert resp.status == 404  # the cloud's answer
    assert node.seen == [body]


@pytest.mark.parametrize("after_a_good_request", [False, True], ids=["first", "kept-alive"])
@pytest.mark.parametrize("method", [b"FOO", b"G\x01T"])
async def test_a_request_with_a_method_aiohttp_cannot_parse_gets_a_status_and_one_short_log_line(
    node: Node, caplog: pytest.LogCaptureFixture, method: bytes, after_a_good_request: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    server._Connection.logged_at = float("-inf")
    port = int(node.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if after_a_good_request:
            writer.write(b"GET /api/v1/namespaces/default/pods/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 404")
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1]
            )
            await reader.readexactly(length)
        writer.write(method + b" /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()  # the connection is closed after the answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") or head.startswith(b"HTTP/1.0 405")
    doc = json.loads(body)
    assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "MethodNotAllowed", 405)
    assert [r for r in caplog.records if r.exc_info] == []
    about = [r for r in caplog.records if "parse" in r.getMessage() or "Error handling" in r.getMessage()]
    assert len(about) == 1 and "\n" not in about[0].getMessage()
