"""The request path: forward to the cloud while it is healthy, answer from the cache while it is not.

handle(request)
  ├── cloud healthy → forward: stream the response back byte for byte, tee cacheable ones into the cache
  │                   (a connection failure marks the server down and falls through to the cache)
  └── cloud away    → local: GET/LIST from the cache, WATCH held open until the cloud returns,
                      kubelet's Lease and node status answered here, Events into the outbox,
                      everything else a 503 Status that says why
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

from yurthub import cache, config, errors, health, metrics, outbox, requestinfo, status, storage, wire

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


async def handle(hub: Hub, request: web.Request) -> web.StreamResponse:
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
    if request.content_length is not None and request.content_length > MAX_REQUEST_BODY:
        return _error(413, f"request body of {request.content_length} bytes exceeds {MAX_REQUEST_BODY}")
    body = await request.read() if request.can_read_body else b""
    server = hub.servers.pick()
    if server is not None:
        try:
            return await forward(hub, request, info, server, body)
        except errors.Unreachable as exc:
            if hub.servers.record(server, False, str(exc)):
                hub.cloud_changed()
            hub.metrics.cloud_healthy.labels(server).set(0)
    return await local(hub, request, info, body)


def _upstream_headers(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}


async def forward(
    hub: Hub, request: web.Request, info: requestinfo.RequestInfo, server: str, body: bytes
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
            headers=_upstream_headers(request),
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
    hub.metrics.requests.labels(info.component, info.verb, info.resource, "forwarded").inc()
    hub.inflight.add(upstream.close)
    try:
        return await _relay(hub, request, info, upstream, body)
    finally:
        hub.inflight.discard(upstream.close)
        upstream.release()


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
            await response.write(chunk)
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


async def local(hub: Hub, request: web.Request, info: requestinfo.RequestInfo, body: bytes) -> web.StreamResponse:
    component, outcome = info.component, "refused"
    try:
        if not info.is_resource:
            return _error(503, f"cloud unreachable: {info.path} is not served from the cache")
        if info.verb in ("get", "list"):
            answer = None
            if cache.cacheable(info, hub.agents):
                answer = await hub.in_writer(cache.answer_read, hub.store, info, request.headers.get("Accept", ""))
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
            return await _hold_watch(hub, request, info)
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


async def _hold_watch(hub: Hub, request: web.Request, info: requestinfo.RequestInfo) -> web.StreamResponse:
    """An offline watch: open, silent, ended cleanly when the cloud returns or its timeout passes."""
    encoding = next(iter(cache.accepted(request.headers.get("Accept", ""))), wire.Encoding.JSON)
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
