"""Online: forward a request to a cloud server and relay its answer, teeing what may be cached.

`forward` sends the request and raises `errors.Unreachable` when no answer came (the caller then asks the
cache). `_relay` streams the answer back byte for byte and hands cacheable bodies and watch batches to the
cache writer. `_relay_filtered` answers filtered requests (`filters`) as JSON, filtered before the cache
sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib

import aiohttp
from aiohttp import web

from yurthub import cache, errors, filters, replies, requestinfo, wire
from yurthub.hub import Hub

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


def metric_component(info: requestinfo.RequestInfo) -> str:
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
    hub.metrics.requests.labels(metric_component(info), info.verb, info.resource, "forwarded").inc()
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
        return replies.error(
            404, f"{info.resource} {info.namespace}/{info.name} is not shown to {info.component}", "NotFound"
        )
    if tee and info.verb == "list" and hub.list_changed(cache.view_key(info, wire.Encoding.JSON), out):
        await hub.record(info.path, cache.record_list, hub.store, info, wire.Encoding.JSON, out)
    elif tee and info.verb == "get":
        await hub.record(info.path, cache.record_object, hub.store, info, wire.Encoding.JSON, out)
    return web.Response(status=200, body=out, headers=headers)
