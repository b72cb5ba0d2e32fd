"""The request path: forward to the cloud while it is healthy, answer from the cache while it is not.

handle(request)
  ├── cloud healthy → forward: stream the response back byte for byte, tee cacheable ones into the cache
  │                   (a connection failure marks the server down and falls through to the cache)
  └── cloud away    → local: GET/LIST from the cache, WATCH held open until the cloud returns,
                      kubelet's Lease and node status answered here, Events into the outbox,
                      everything else a 503 Status that says why

Filtered requests (`filters`: a component's services/endpointslices get, list and watch) are fetched and
answered as JSON, filtered before the cache sees them; offline they are answered from that JSON. On the HTTPS
door (`door`) a pod's own token is required and forwarded, and the request's cache scope is its token's hash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import random
import time
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from yurthub import (
    cache,
    config,
    errors,
    filters,
    health,
    metrics,
    outbox,
    requestinfo,
    status,
    storage,
    topology,
    wire,
)

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
MAX_CACHED_BODY = 64 * 1024 * 1024
MAX_REQUEST_BODY = 16 * 1024 * 1024
MAX_PENDING_WRITES = 256
MAX_HEADER = 16 * 1024
"""Longest request header accepted; aiohttp's own parser stops at 64 KiB (`server.PARSER_LIMIT`)."""
DEFAULT_WATCH_TIMEOUT_S = 1800


class Hub:
    """Everything the request path needs, built once by `server` and passed in."""

    def __init__(
        self,
        settings: config.HubSettings,
        servers: health.Servers,
        store: storage.Storage,
        box: outbox.Outbox,
        stats: metrics.Metrics,
        node_session: aiohttp.ClientSession,
        token_session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.servers = servers
        self.store = store
        self.outbox = box
        self.metrics = stats
        self.node_session = node_session
        self.token_session = token_session
        self.agents = frozenset(settings.cache.cache_agents)
        # One writer thread: cache writes apply in arrival order and SQLite sees a single writer.
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        self.inflight: set[Callable[[], object]] = set()
        self.pending: set[asyncio.Future[Any]] = set()
        self.last_lists: dict[object, bytes] = {}
        self.cache_writable = True
        """False while cache writes fail (a full disk); forwarding goes on regardless."""
        self.closing: set[asyncio.Future[None]] = set()
        self.cloud_back = asyncio.Event()
        self.filter_rules = filters.index(dict(settings.filters.rules)) if settings.filters.enabled else {}
        self.door = (settings.door.address, settings.door.port) if settings.door.enabled else None
        self.facts = topology.FactsSource(
            settings.node_name, settings.filters.nodepool_label, store, self.fetch_json, self.in_writer
        )

    def filter_names(self, info: requestinfo.RequestInfo) -> tuple[str, ...]:
        """The filters this request's response goes through (`masterservice` only while the door is open)."""
        names = filters.names_for(self.filter_rules, info)
        return tuple(n for n in names if n != filters.MASTER_SERVICE or self.door is not None)

    async def chain(self, info: requestinfo.RequestInfo, names: tuple[str, ...]) -> filters.Chain:
        facts = await self.facts.get() if filters.SERVICE_TOPOLOGY in names else None
        return filters.build(names, door=self.door, facts=facts)

    async def fetch_json(self, path: str) -> bytes | None:
        """GET `path` from a healthy cloud server with the node's identity; None if that cannot be had."""
        server = self.servers.pick()
        if server is None:
            return None
        try:
            async with asyncio.timeout(self.settings.cloud.request_timeout_s):
                headers = {"Accept": wire.JSON, "User-Agent": "yurthub"}
                async with self.node_session.get(server + path, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        log.info("cloud GET refused path=%s status=%d body=%r", path, resp.status, body[:200])
                        return None
                    return body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.info("cloud GET failed path=%s error=%s", path, type(exc).__name__)
            return None

    def cloud_changed(self) -> None:
        """Called when the cloud as a whole went away or came back."""
        if self.servers.is_healthy:
            self.cloud_back.set()
            self.cloud_back = asyncio.Event()
        else:
            for abort in list(self.inflight):
                abort()

    async def in_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def record(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a cache write on the writer thread and return at once: the client never waits for the disk.

        Writes run one at a time in the order queued, so a list and the watch events after it apply in
        order. Past `MAX_PENDING_WRITES` queued writes the caller waits for the oldest (backpressure instead
        of unbounded memory). A failure is counted and logged, never raised to the client.
        """
        while len(self.pending) >= MAX_PENDING_WRITES:
            await asyncio.wait(set(self.pending), return_when=asyncio.FIRST_COMPLETED)
        future = asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)
        self.pending.add(future)
        future.add_done_callback(lambda f: self._written(what, f))

    def _written(self, what: str, future: asyncio.Future[Any]) -> None:
        self.pending.discard(future)
        exc = future.exception() if not future.cancelled() else None
        if exc is None:
            self.cache_writable = True
            self.metrics.cache_writable.set(1)
        elif isinstance(exc, errors.StorageError):
            self.last_lists.clear()  # what was not stored must be written again when it comes again
            self.cache_writable = False
            self.metrics.cache_writable.set(0)
            self.metrics.cache_write_errors.labels("storage").inc()
            log.error("cache write failed what=%s error=%s", what, exc)
        elif isinstance(exc, errors.WireFormatError | ValueError | UnicodeDecodeError):
            self.metrics.cache_write_errors.labels("malformed").inc()
            log.warning("not caching a malformed response what=%s error=%s", what, exc)
        else:
            self.metrics.cache_write_errors.labels("bug").inc()
            log.error("cache write crashed what=%s", what, exc_info=exc)

    def spawn_close(self, session: aiohttp.ClientSession) -> None:
        """Close a retired session in the background (held here so the task is not lost)."""
        task = asyncio.ensure_future(session.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def list_changed(self, key: object, body: bytes) -> bool:
        """False when this exact list was the last one stored for its view: nothing to write again."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        if self.last_lists.get(key) == digest:
            return False
        self.last_lists[key] = digest
        return True


def _answered(answer: cache.Answer, code: int | None = None) -> web.Response:
    """A response carrying cached bytes exactly, with their own content type."""
    return web.Response(
        status=code or answer.status, body=answer.body, content_type=None, headers={"Content-Type": answer.content_type}
    )


def _error(code: int, message: str, reason: str | None = None) -> web.Response:
    return web.Response(status=code, body=status.body(code, message, reason), content_type="application/json")


async def handle(hub: Hub, request: web.Request, *, door: bool = False) -> web.StreamResponse:
    """Route one request. On the HTTPS `door` a pod's own bearer token is required: it is forwarded as the
    pod's identity, and the cache scope of the request is that token's (`cache.token_scope`)."""
    too_big = [k for k, v in request.headers.items() if len(k) + len(v) > MAX_HEADER]
    if too_big:
        return _error(
            431, f"request header {too_big[0]} is longer than {MAX_HEADER} bytes", "RequestHeaderFieldsTooLarge"
        )
    try:
        info = requestinfo.parse(
            request.method,
            request.raw_path.split("?", 1)[0],
            dict(request.query),
            request.headers.get("User-Agent", ""),
        )
    except errors.BadRequest as exc:
        hub.metrics.requests.labels("", request.method.lower(), "", "refused").inc()
        return _error(400, str(exc))
    if door:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            hub.metrics.requests.labels("", info.verb, info.resource, "refused").inc()
            return _error(401, "the HTTPS door of yurthub needs the pod's own bearer token", "Unauthorized")
        info = dataclasses.replace(info, component=cache.token_scope(token.strip()))
    names = hub.filter_names(info)
    if names and wire.Encoding.JSON not in cache.accepted(request.headers.get("Accept", "")):
        return _error(
            406,
            f"yurthub filters {info.resource} for {info.component} and sends them as JSON, "
            "which this client does not accept",
            "NotAcceptable",
        )
    if request.content_length is not None and request.content_length > MAX_REQUEST_BODY:
        return _error(413, f"request body of {request.content_length} bytes exceeds {MAX_REQUEST_BODY}")
    body = await request.read() if request.can_read_body else b""
    server = hub.servers.pick()
    if server is not None:
        try:
            return await forward(hub, request, info, server, body, names)
        except errors.Unreachable as exc:
            if hub.servers.record(server, False, str(exc)):
                hub.cloud_changed()
            hub.metrics.cloud_healthy.labels(server).set(0)
    return await local(hub, request, info, body, names)


def _metric_component(info: requestinfo.RequestInfo) -> str:
    """The component as metrics label it: every pod token counts as `pod`, so tokens never multiply series."""
    return "pod" if cache.is_token_scope(info.component) else info.component


def _upstream_headers(request: web.Request, filtered: bool = False) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones. A filtered request asks for plain JSON (`filters`)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if filtered:
        headers = {k: v for k, v in headers.items() if k.lower() not in ("accept", "accept-encoding")}
        headers["Accept"] = wire.JSON
    return headers


async def forward(
    hub: Hub,
    request: web.Request,
    info: requestinfo.RequestInfo,
    server: str,
    body: bytes,
    names: tuple[str, ...] = (),
) -> web.StreamResponse:
    session = hub.token_session if "Authorization" in request.headers else hub.node_session
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=hub.settings.cloud.heartbeat_timeout_s + 1,
        sock_read=None if info.verb == "watch" else hub.settings.cloud.request_timeout_s,
    )
    started = time.monotonic()
    call = asyncio.ensure_future(
        session.request(
            request.method,
            server + request.raw_path,
            headers=_upstream_headers(request, bool(names)),
            data=body or None,
            timeout=timeout,
            allow_redirects=False,
            auto_decompress=False,
        )
    )
    aborted = False

    def abort() -> None:
        nonlocal aborted
        aborted = True
        call.cancel()

    hub.inflight.add(abort)
    try:
        upstream = await call
    except asyncio.CancelledError:
        if not aborted:  # the client went away: not the cloud's fault
            raise
        raise errors.Unreachable("the cloud became unreachable while waiting for its answer") from None
    except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
        raise errors.Unreachable(f"{type(exc).__name__}: {exc}") from None
    finally:
        hub.inflight.discard(abort)
    hub.metrics.upstream_latency.labels(server).observe(time.monotonic() - started)
    hub.metrics.requests.labels(_metric_component(info), info.verb, info.resource, "forwarded").inc()
    hub.inflight.add(upstream.close)
    try:
        if (
            names
            and upstream.status == 200
            and wire.encoding_of(upstream.headers.get("Content-Type", "")) is wire.Encoding.JSON
        ):
            return await _relay_filtered(hub, request, info, upstream, names)
        return await _relay(hub, request, info, upstream, body)
    finally:
        hub.inflight.discard(upstream.close)
        upstream.release()


async def _write(response: web.StreamResponse, data: bytes, info: requestinfo.RequestInfo) -> bool:
    """Send to the client; False when it went away (aiohttp's ClientConnectionResetError is a
    ConnectionResetError), which is the client's doing, not the cloud's."""
    try:
        await response.write(data)
    except ConnectionResetError:
        log.debug("client went away path=%s", info.path)
        return False
    return True


async def _relay(
    hub: Hub, request: web.Request, info: requestinfo.RequestInfo, upstream: aiohttp.ClientResponse, request_body: bytes
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_BY_HOP:
            response.headers.add(key, value)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    encoding = wire.encoding_of(upstream.headers.get("Content-Type", ""))
    token = cache.is_token_request(info) and bool(info.component) and info.component in hub.agents
    tee = encoding is not None and upstream.status in (200, 201) and (cache.cacheable(info, hub.agents) or token)
    gunzip = (
        zlib.decompressobj(16 + zlib.MAX_WBITS)
        if tee and upstream.headers.get("Content-Encoding", "").lower() == "gzip"
        else None
    )
    await response.prepare(request)
    splitter = wire.FrameSplitter(encoding) if tee and encoding and info.verb == "watch" else None
    kept = bytearray()
    complete = False
    try:
        async for chunk in upstream.content.iter_any():
            if not await _write(response, chunk, info):
                return response  # what was read is not the whole answer: nothing is kept
            if not tee:
                continue
            plain = gunzip.decompress(chunk) if gunzip else chunk
            if splitter is not None and encoding is not None:
                try:
                    frames = splitter.feed(plain)
                except errors.WireFormatError as exc:
                    log.warning("watch stream not cacheable path=%s error=%s", info.path, exc)
                    tee = False
                    continue
                if frames:
                    await hub.record(info.path, cache.record_events, hub.store, info, encoding, frames)
            elif len(kept) + len(plain) <= MAX_CACHED_BODY:
                kept += plain
            else:
                tee = False
        complete = True
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.info("upstream stream ended early path=%s error=%s", info.path, type(exc).__name__)
    if tee and complete and splitter is None and encoding is not None:
        if upstream.content_length is not None and gunzip is None and len(kept) != upstream.content_length:
            hub.metrics.cache_write_errors.labels("truncated").inc()
        elif token:
            await hub.record(info.path, cache.record_token, hub.store, info, encoding, request_body, bytes(kept))
        elif info.verb == "list":
            if hub.list_changed(cache.view_key(info, encoding), bytes(kept)):
                await hub.record(info.path, cache.record_list, hub.store, info, encoding, bytes(kept))
        else:
            await hub.record(info.path, cache.record_object, hub.store, info, encoding, bytes(kept))
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _relay_filtered(
    hub: Hub,
    request: web.Request,
    info: requestinfo.RequestInfo,
    upstream: aiohttp.ClientResponse,
    names: tuple[str, ...],
) -> web.StreamResponse:
    """A 200 JSON response through its filters (`filters`): objects, lists and watch events; what is kept in
    the cache is what the client was sent. A body that does not parse is relayed as it came and not kept."""
    tee = cache.cacheable(info, hub.agents)
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    if info.verb == "watch":
        response = web.StreamResponse(status=200, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        splitter = wire.FrameSplitter(wire.Encoding.JSON)
        try:
            async for chunk in upstream.content.iter_any():
                frames = splitter.feed(chunk)
                if not frames:
                    continue
                chain = await hub.chain(info, names)
                try:
                    kept = [f for f in (filters.event_frame(chain, info, frame) for frame in frames) if f is not None]
                except (errors.WireFormatError, ValueError) as exc:
                    log.warning("watch event not filterable path=%s error=%s", info.path, exc)
                    kept, tee = frames, False
                if kept:
                    if not await _write(response, b"".join(f + b"\n" for f in kept), info):
                        break
                    if tee:
                        await hub.record(info.path, cache.record_events, hub.store, info, wire.Encoding.JSON, kept)
        except (TimeoutError, aiohttp.ClientError, errors.WireFormatError) as exc:
            log.info("upstream stream ended early path=%s error=%s", info.path, type(exc).__name__)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response
    try:
        body = await upstream.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise errors.Unreachable(f"response cut short: {type(exc).__name__}") from None
    chain = await hub.chain(info, names)
    out: bytes | None
    try:
        out = filters.list_body(chain, info, body) if info.verb == "list" else filters.object_body(chain, info, body)
    except (errors.WireFormatError, ValueError) as exc:
        log.warning("response not filterable path=%s error=%s", info.path, exc)
        return web.Response(status=200, body=body, headers=headers)
    if out is None:
        return _error(404, f"{info.resource} {info.namespace}/{info.name} is not shown to {info.component}", "NotFound")
    if tee and info.verb == "list" and hub.list_changed(cache.view_key(info, wire.Encoding.JSON), out):
        await hub.record(info.path, cache.record_list, hub.store, info, wire.Encoding.JSON, out)
    elif tee and info.verb == "get":
        await hub.record(info.path, cache.record_object, hub.store, info, wire.Encoding.JSON, out)
    return web.Response(status=200, body=out, headers=headers)


async def local(
    hub: Hub, request: web.Request, info: requestinfo.RequestInfo, body: bytes, names: tuple[str, ...] = ()
) -> web.StreamResponse:
    component, outcome = _metric_component(info), "refused"
    accept = wire.JSON if names else request.headers.get("Accept", "")  # filtered answers are kept as JSON only
    try:
        if not info.is_resource:
            return _error(503, f"cloud unreachable: {info.path} is not served from the cache")
        if cache.is_token_scope(component) and info.verb not in ("get", "list", "watch"):
            return _error(
                503,
                f"cloud unreachable: {info.verb} {info.gvr} with a pod's token cannot be honoured offline; "
                "retry when the cloud is back",
            )
        if info.verb in ("get", "list"):
            answer = None
            if cache.cacheable(info, hub.agents):
                answer = await hub.in_writer(cache.answer_read, hub.store, info, accept)
            hub.metrics.cache_reads.labels(component, "hit" if answer else "miss").inc()
            if answer is None:
                outcome = "miss"
                return _error(
                    503,
                    f"cloud unreachable and nothing cached for {component or 'this client'}: "
                    f"{info.verb} {info.gvr} {info.namespace}/{info.name}".rstrip("/"),
                )
            outcome = "cache"
            return _answered(answer)
        if info.verb == "watch" and cache.cacheable(info, hub.agents):
            outcome = "held"
            return await _hold_watch(hub, request, info, accept)
        if info.resource == "leases" and info.verb == "update" and info.component == "kubelet":
            outcome = "local"
            return await _echo_and_keep(hub, request, info, body, 200)
        if info.resource == "nodes" and info.subresource == "status" and info.component == "kubelet":
            outcome = "local"
            return await _cached_node(hub, request, info)
        if info.resource == "events" and info.verb in ("create", "patch"):
            outcome = "queued"
            return await _queue_event(hub, request, info, body)
        if cache.is_token_request(info) and info.component in hub.agents:
            answer = await hub.in_writer(cache.answer_token, hub.store, info, request.headers.get("Accept", ""), body)
            if answer is not None:
                outcome = "cache"
                return _answered(answer)
        if info.resource == "nodes" and info.verb == "create" and info.component == "kubelet":
            content_type = request.headers.get("Content-Type", "")
            if await hub.in_writer(cache.cached_node_named, hub.store, info, body, content_type):
                outcome = "local"  # what the cloud would say to a kubelet re-registering its node
                return _error(
                    409, "node already exists (answered from the cache: the cloud is unreachable)", "AlreadyExists"
                )
        return _error(
            503,
            f"cloud unreachable: {info.verb} {info.gvr} cannot be honoured offline; "
            "the client should retry when the cloud is back",
        )
    except errors.StorageError as exc:
        return _error(503, f"cloud unreachable and the cache cannot be read: {exc}")
    finally:
        hub.metrics.requests.labels(component, info.verb, info.resource, outcome).inc()


async def _queue_event(hub: Hub, request: web.Request, info: requestinfo.RequestInfo, body: bytes) -> web.Response:
    """Keep an event write for the cloud; answer as the cloud would have (the object, or the cached one)."""
    content_type = request.headers.get("Content-Type", wire.JSON)
    await hub.in_writer(
        hub.outbox.put, outbox.Write(request.method, request.raw_path, content_type, body, info.component)
    )
    hub.metrics.outbox_depth.set(len(hub.outbox))
    hub.metrics.outbox_dropped.set(hub.outbox.dropped)
    if info.verb == "create":
        return web.Response(status=201, body=body, content_type=None, headers={"Content-Type": content_type})
    answer = await hub.in_writer(
        cache.answer_read, hub.store, dataclasses.replace(info, verb="get"), request.headers.get("Accept", "")
    )
    if answer is None:
        return _error(503, "cloud unreachable: the event update is queued for the cloud, but no copy is cached")
    return _answered(answer, 200)


async def _hold_watch(hub: Hub, request: web.Request, info: requestinfo.RequestInfo, accept: str) -> web.StreamResponse:
    """An offline watch: open, silent, ended cleanly when the cloud returns or its timeout passes."""
    encoding = next(iter(cache.accepted(accept)), wire.Encoding.JSON)
    response = web.StreamResponse(status=200)
    response.headers["Content-Type"] = wire.content_type(encoding, watch=True)
    await response.prepare(request)
    timeout = info.timeout_seconds or DEFAULT_WATCH_TIMEOUT_S * random.uniform(1, 2)  # noqa: S311 - jitter
    back = hub.cloud_back
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(back.wait(), timeout)
        # Spread reconnects over a few seconds so every client does not hit the cloud at once.
        await asyncio.sleep(random.uniform(0, 2))  # noqa: S311 - jitter, not security
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


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
        return _error(503, f"cloud unreachable and node {info.name} is not cached")
    return _answered(answer, 200)
