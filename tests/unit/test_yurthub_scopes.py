"""The request path's use of the cache's bounds: idle token scopes are swept, a GET the cloud answers 404 is
remembered as deleted. Same harness as `test_yurthub_bounds` (real HTTP on loopback, a small aiohttp cloud)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest

from tests.unit.test_yurthub_bounds import CONFIGMAPS, Node, _configmap_list, answers, gate, limits, node, settings
from yurthub import cache, config, health, metrics, outbox, proxy, server, storage, wire

__all__ = ["answers", "gate", "limits", "node"]  # fixtures used here


async def test_token_scopes_unused_for_a_tokens_lifetime_are_swept(tmp_path: Path) -> None:
    now = [0.0]
    store = storage.MemoryStorage(clock=lambda: now[0])
    s = settings("http://127.0.0.1:1", tmp_path, config.LimitSettings(token_scope_idle_s=3600))
    box = outbox.Outbox(tmp_path / "outbox", 10)
    async with aiohttp.ClientSession() as session:
        hub = proxy.Hub(s, health.Servers(s.cloud), store, box, metrics.Metrics(), session, session)
        now[0] = hub.servers.cloud_since  # the cloud reachable from here on
        for token in ("old", "fresh"):
            scope = storage.Scope(cache.token_scope(token), wire.Encoding.JSON, "configmaps.v1.core")
            store.put_object(scope, wire.parse_object(wire.Encoding.JSON, _one()))
            now[0] += 3000
        assert store.counts().token_scopes == 2
        assert await server.sweep_once(hub, now=now[0]) == 1  # "old" was last used 6000 s ago, "fresh" 3000
        assert store.counts().token_scopes == 1
        hub.writer.shutdown(wait=True)
    box.close()


async def test_no_token_scope_is_swept_offline_nor_before_the_cloud_was_back_for_a_tokens_lifetime(
    tmp_path: Path,
) -> None:
    now = [0.0]
    store = storage.MemoryStorage(clock=lambda: now[0])
    s = settings("http://127.0.0.1:1", tmp_path, config.LimitSettings(token_scope_idle_s=3600))
    box = outbox.Outbox(tmp_path / "outbox", 10)
    async with aiohttp.ClientSession() as session:
        hub = proxy.Hub(s, health.Servers(s.cloud), store, box, metrics.Metrics(), session, session)
        server_url = hub.servers.states[0].server
        now[0] = hub.servers.cloud_since
        scope = storage.Scope(cache.token_scope("held"), wire.Encoding.JSON, "configmaps.v1.core")
        store.put_object(scope, wire.parse_object(wire.Encoding.JSON, _one()))  # then a quiet watch, held
        hub.server_failed(server_url, "link cut")
        # a day offline: kubelet hands the pod the same token, its held watch makes no request
        assert await server.sweep_once(hub, now=now[0] + 86_400) == 0
        for _ in range(s.cloud.heartbeat_healthy_threshold):
            hub.servers.record(server_url, True)
        assert hub.servers.is_healthy
        back = hub.servers.cloud_since
        assert await server.sweep_once(hub, now=back + 60) == 0  # its pod has not called again yet
        assert store.counts().token_scopes == 1
        assert await server.sweep_once(hub, now=back + 3600) == 1  # unused for a lifetime of a reachable cloud
        hub.writer.shutdown(wait=True)
    box.close()


def _one() -> bytes:
    return b'{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c","namespace":"default","resourceVersion":"3"}}'


@pytest.mark.parametrize("answers", [{CONFIGMAPS: (_configmap_list(2), "application/json")}])
async def test_a_get_the_cloud_answers_404_is_remembered_as_deleted(node: Node) -> None:
    headers = {"User-Agent": "kubelet/v1.34", "Accept": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + CONFIGMAPS, headers=headers) as resp:
            assert resp.status == 200
        async with session.get(node.url + CONFIGMAPS + "/c1", headers=headers) as resp:
            assert resp.status == 404
    if node.hub.pending:
        await asyncio.wait(set(node.hub.pending))
    assert node.hub.store.is_deleted("kubelet", "configmaps.v1.core", "default", "c1")


EVENTS = "/api/v1/namespaces/default/events"
NODES = "/api/v1/nodes"
KUBELET = {"User-Agent": "kubelet/v1.34", "Accept": "application/json"}


def _event_list() -> bytes:
    return b'{"kind":"EventList","apiVersion":"v1","metadata":{"resourceVersion":"5"},"items":[]}'


def _node_list() -> bytes:
    return b'{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"5"},"items":[]}'


async def _deleted_online_then_offline(node: Node, listing: str, gone: str) -> aiohttp.ClientSession:
    """List `listing` and GET `gone` (the cloud answers 404) as kubelet, then lose the cloud."""
    session = aiohttp.ClientSession()
    async with session.get(node.url + listing, headers=KUBELET) as resp:
        assert resp.status == 200
    async with session.get(node.url + gone, headers=KUBELET) as resp:
        assert resp.status == 404
    if node.hub.pending:
        await asyncio.wait(set(node.hub.pending))
    node.hub.server_failed(node.hub.servers.states[0].server, "cut by the test")
    assert not node.hub.servers.is_healthy
    return session


def _not_found(resource: str, name: str) -> dict[str, object]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{resource} "{name}" not found',
        "reason": "NotFound",
        "details": {"name": name, "kind": resource},
        "code": 404,
    }


@pytest.mark.parametrize("answers", [{EVENTS: (_event_list(), "application/json")}])
async def test_offline_an_event_patch_of_a_deleted_event_is_the_clouds_404(node: Node) -> None:
    session = await _deleted_online_then_offline(node, EVENTS, EVENTS + "/e1")
    async with session:
        headers = {**KUBELET, "Content-Type": "application/strategic-merge-patch+json"}
        async with session.patch(node.url + EVENTS + "/e1", data=b'{"count":2}', headers=headers) as resp:
            assert (resp.status, await resp.json()) == (404, _not_found("events", "e1"))


@pytest.mark.parametrize("answers", [{NODES: (_node_list(), "application/json")}])
async def test_offline_a_node_status_update_for_a_deleted_node_is_the_clouds_404(node: Node) -> None:
    session = await _deleted_online_then_offline(node, NODES, NODES + "/edge-1")
    async with session:
        headers = {**KUBELET, "Content-Type": "application/strategic-merge-patch+json"}
        async with session.patch(node.url + NODES + "/edge-1/status", data=b"{}", headers=headers) as resp:
            assert (resp.status, await resp.json()) == (404, _not_found("nodes", "edge-1"))


@pytest.mark.parametrize("answers", [{CONFIGMAPS: (_configmap_list(2), "application/json")}])
async def test_offline_a_get_of_a_deleted_object_is_a_404_counted_as_a_cache_hit(node: Node) -> None:
    session = await _deleted_online_then_offline(node, CONFIGMAPS, CONFIGMAPS + "/gone")
    async with session, session.get(node.url + CONFIGMAPS + "/gone", headers=KUBELET) as resp:
        assert (resp.status, await resp.json()) == (404, _not_found("configmaps", "gone"))
    reads = generate_latest(node.hub.metrics.registry).decode()
    assert 'yurthub_cache_reads_total{component="kubelet",result="hit"} 1.0' in reads
    assert 'result="miss"' not in reads
