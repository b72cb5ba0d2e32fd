"""Offline: answer a request from the cache while no cloud server is healthy.

GET and LIST come from the cache in the client's encoding; a WATCH is held open until the cloud returns,
silent but for MODIFIED events of objects the node rewrote offline (JSON watches only, see `statuses`), and
then until the pods' statuses queued offline reached the cloud (at most `STATUS_FLUSH_WAIT_S`): a client
that relisted earlier would get the cloud's EndpointSlices, still naming this node's pods' old addresses,
and undo the node's offline rewrite (kube-proxy sending the Service to addresses that no longer exist);
kubelet's Lease renewals and node status are answered here, and its pod status patches applied to the
cache and queued (`statuses`); Events go to the outbox; everything else is a 503 `Status` that says why.
What is answered only for the node's own components (`_node_only`) needs the request to be the node's
(`Admitted.node`: its name and a trusted uid, `fairness.classify`); anybody else gets a 403 `Status`.
An answer read whole from the cache counts against the node-wide `requests` memory budget until it is sent
(429 when there is no room).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sqlite3
import weakref

from aiohttp import web

from yurthub import cache, errors, outbox, replies, requestinfo, statuses, wire
from yurthub.hub import AS_JSON, Admitted, HeldWatch, Hub

DEFAULT_WATCH_TIMEOUT_S = 1800
STATUS_FLUSH_WAIT_S = 20.0
"""How long held watches outlive the cloud's return while the outbox still holds pods' statuses."""
STATUS_FLUSH_POLL_S = 0.2
_flushes: weakref.WeakKeyDictionary[asyncio.Event, asyncio.Future[None]] = weakref.WeakKeyDictionary()
"""One wait for the statuses per return of the cloud (`hub.cloud_back` is a new Event each time), shared by
every held watch."""


async def serve(hub: Hub, request: web.Request, admitted: Admitted) -> web.StreamResponse:
    info, body, names = admitted.info, admitted.body, admitted.names
    component, outcome = info.component, "refused"
    accept = request.headers.get("Accept", "")
    if names:  # filtered answers are kept as JSON only; the unfiltered JSON ones (`AS_JSON`) prefer it
        accept = wire.JSON if set(names) - {AS_JSON} else f"{wire.JSON},{accept}"
    try:
        refusal = _refusal(hub, admitted)
        if refusal is not None:
            return refusal
        if info.verb in ("get", "list"):
            response, outcome = await _read(hub, request, admitted, accept)
            return response
        if info.verb == "watch" and cache.cacheable(info, hub.agents):
            outcome = "held"
            return await _hold_watch(hub, request, info, accept)
        if info.resource == "leases" and info.verb == "update" and info.component == "kubelet":
            outcome = "local"
            return await _echo_and_keep(hub, request, info, body, 200)
        if info.resource == "nodes" and info.subresource == "status" and info.component == "kubelet":
            outcome = "local"
            return await _cached_node(hub, request, info)
        if statuses.is_offline_status_patch(info):
            outcome = "local"
            return await statuses.offline_patch(hub, request, info, body)
        if info.resource == "events" and info.verb in ("create", "patch"):
            outcome = "queued"
            return await _queue_event(hub, request, info, body)
        if cache.is_token_request(info) and info.component in hub.agents:
            answer = await hub.in_writer(cache.answer_token, hub.store, info, request.headers.get("Accept", ""), body)
            if answer is not None:
                outcome = "cache"
                return replies.cached(answer)
        if info.resource == "nodes" and info.verb == "create" and info.component == "kubelet":
            content_type = request.headers.get("Content-Type", "")
            if await hub.in_writer(cache.cached_node_named, hub.store, info, body, content_type):
                outcome = "local"  # what the cloud would say to a kubelet re-registering its node
                return replies.error(
                    409, "node already exists (answered from the cache: the cloud is unreachable)", "AlreadyExists"
                )
        return replies.error(
            503,
            f"cloud unreachable: {info.verb} {info.gvr} cannot be honoured offline; "
            "the client should retry when the cloud is back",
        )
    except errors.StorageError as exc:
        return replies.error(503, f"cloud unreachable and the cache cannot be read: {exc}")
    finally:
        hub.metrics.request(component, info.verb, info.resource, outcome)


def _refusal(hub: Hub, admitted: Admitted) -> web.Response | None:
    """What is refused offline whatever the cache holds: a non-resource path, a write with a pod's token, and
    what only the node's own components may do (`_node_only`) asked by anybody else (403)."""
    info = admitted.info
    if not info.is_resource:
        return replies.error(503, f"cloud unreachable: {info.path} is not served from the cache")
    if cache.is_token_scope(info.component) and info.verb not in ("get", "list", "watch"):
        return replies.error(
            503,
            f"cloud unreachable: {info.verb} {info.gvr} with a pod's token cannot be honoured offline; "
            "retry when the cloud is back",
        )
    if _node_only(hub, info) and not admitted.node:
        return replies.error(
            403,
            f"cloud unreachable: {info.verb} {info.gvr} is answered offline only for the node's own "
            f"{info.component}, and this client is not it (its process does not run as one of --node-uids, "
            "its user could not be told, or it sent an Authorization of its own); retry when the cloud is back",
            "Forbidden",
        )
    return None


def _node_only(hub: Hub, info: requestinfo.RequestInfo) -> bool:
    """Whether `info` asks for something answered offline only for the node's own components (kubelet's
    Lease, node status and re-registration, its pod status patches, a cache agent's cached tokens): every
    such grant needs `Admitted.node` (a trusted uid, `fairness.classify`), not only the component's name.
    All of them are writes: reads are answered from the cache scope the request names, as online."""
    if info.verb in ("get", "list", "watch"):
        return False
    kubelet = info.component == "kubelet"
    return (
        (info.resource == "leases" and info.verb == "update" and kubelet)
        or (info.resource == "nodes" and info.subresource == "status" and kubelet)
        or (info.resource == "nodes" and info.verb == "create" and kubelet)
        or statuses.is_offline_status_patch(info)
        or (cache.is_token_request(info) and info.component in hub.agents)
    )


async def _read(hub: Hub, request: web.Request, admitted: Admitted, accept: str) -> tuple[web.Response, str]:
    """A GET or LIST from the cache, and the outcome to count."""
    info = admitted.info
    answer = None
    if cache.cacheable(info, hub.agents):
        answer = await hub.in_writer(cache.answer_read, hub.store, info, accept)
    hub.metrics.cache_read(info.component, "miss" if answer is None else "hit")  # a remembered 404 is a hit
    if answer is None:
        return replies.error(
            503,
            f"cloud unreachable and nothing cached for {_who(info)}: "
            f"{info.verb} {info.gvr} {info.namespace}/{info.name}".rstrip("/"),
        ), "miss"
    if not admitted.held.grow(len(answer.body)):
        hub.metrics.overloaded.labels("requests").inc()
        return replies.overloaded("answers from the cache", hub.settings.limits.retry_after_s), "refused"
    return await replies.send(request, replies.cached(answer)), "cache"


async def _queue_event(hub: Hub, request: web.Request, info: requestinfo.RequestInfo, body: bytes) -> web.Response:
    """Keep an event write for the cloud; answer as the cloud would have (the object, or the cached one)."""
    content_type = request.headers.get("Content-Type", wire.JSON)
    write = outbox.Write(request.method, request.raw_path, content_type, body, info.component)
    await hub.in_writer(_put, hub, write)
    if info.verb == "create":
        return web.Response(status=201, body=body, content_type=None, headers={"Content-Type": content_type})
    answer = await hub.in_writer(
        cache.answer_read, hub.store, dataclasses.replace(info, verb="get"), request.headers.get("Accept", "")
    )
    if answer is None:
        return replies.error(503, "cloud unreachable: the event update is queued for the cloud, but no copy is cached")
    return replies.cached(answer)  # the cached event (200), or the cloud's 404 for one it deleted


async def _hold_watch(hub: Hub, request: web.Request, info: requestinfo.RequestInfo, accept: str) -> web.StreamResponse:
    """An offline watch: open, ended cleanly when the cloud returns or its timeout passes. A JSON watch gets
    a MODIFIED event for each object of its view the node rewrites offline (`statuses.publish`)."""
    encoding = next(iter(cache.accepted(accept)), wire.Encoding.JSON)
    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = wire.content_type(encoding, watch=True)
    timeout = info.timeout_seconds or DEFAULT_WATCH_TIMEOUT_S * random.uniform(1, 2)  # noqa: S311 - jitter
    back = hub.cloud_back
    held = HeldWatch(cache.view_key(info, encoding)) if encoding is wire.Encoding.JSON else None
    if held is not None:
        hub.held.add(held)  # before the client sees the answer start: nothing changed after that is missed
    try:
        await response.prepare(request)
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout):
                while not await _next_event(back, held, response):
                    pass
                if back.is_set():
                    await asyncio.shield(_statuses_flushed(hub, back))
                # Spread reconnects over a few seconds so every client does not hit the cloud at once.
                await asyncio.sleep(random.uniform(0, 2))  # noqa: S311 - jitter, not security
    finally:
        if held is not None:
            hub.held.discard(held)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def _statuses_flushed(hub: Hub, back: asyncio.Event) -> asyncio.Future[None]:
    """The shared wait, after the return `back` marks, for the outbox to hold no pod status (or the cloud to
    go again, or `STATUS_FLUSH_WAIT_S`)."""
    flush = _flushes.get(back)
    if flush is None:
        flush = asyncio.ensure_future(_wait_for_statuses(hub))
        _flushes[back] = flush
    return flush


async def _wait_for_statuses(hub: Hub) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        async with asyncio.timeout(STATUS_FLUSH_WAIT_S):
            while hub.servers.is_healthy:
                try:
                    if not await hub.in_writer(hub.outbox.statuses):
                        return
                except (OSError, sqlite3.Error):
                    return  # the outbox cannot be read: nothing to wait for
                await asyncio.sleep(STATUS_FLUSH_POLL_S)


async def _next_event(back: asyncio.Event, held: HeldWatch | None, response: web.StreamResponse) -> bool:
    """Wait for the cloud's return (True) or write the next offline event (False); a client gone is True."""
    if held is None:
        await back.wait()
        return True
    returned = asyncio.ensure_future(back.wait())
    event = asyncio.ensure_future(held.events.get())
    try:
        done, _ = await asyncio.wait({returned, event}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        returned.cancel()
        event.cancel()
    if event in done and not event.cancelled():
        try:
            await response.write(event.result())
        except ConnectionResetError:
            return True
        return False
    return True


async def _echo_and_keep(
    hub: Hub, request: web.Request, info: requestinfo.RequestInfo, body: bytes, code: int
) -> web.Response:
    content_type = request.headers.get("Content-Type", wire.JSON)
    encoding = wire.encoding_of(content_type)
    if encoding is not None:
        await hub.record(info.path, cache.record_object, hub.store, info, encoding, body)
    return web.Response(status=code, body=body, content_type=None, headers={"Content-Type": content_type})


async def _cached_node(hub: Hub, request: web.Request, info: requestinfo.RequestInfo) -> web.Response:
    plain = dataclasses.replace(info, verb="get", subresource="")
    answer = await hub.in_writer(cache.answer_read, hub.store, plain, request.headers.get("Accept", ""))
    if answer is None:
        return replies.error(503, f"cloud unreachable and node {info.name} is not cached")
    return replies.cached(answer)  # the cached node (200), or the cloud's 404 for one it deleted


def _put(hub: Hub, write: outbox.Write) -> None:
    """On the writer thread: queue the write and note the depth, so the event loop never asks the disk."""
    hub.outbox.put(write)
    hub.outbox_depth = len(hub.outbox)
    hub.metrics.outbox_depth.set(hub.outbox_depth)
    hub.metrics.outbox_dropped.set(hub.outbox.dropped)


def _who(info: requestinfo.RequestInfo) -> str:
    """Whose cache scope a message names: a token scope as such (its hash means nothing to a person)."""
    if cache.is_token_scope(info.component):
        return "this token"
    return info.component or "this client"
