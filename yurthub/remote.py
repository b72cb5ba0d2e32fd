"""Online: forward a request to a cloud server and relay its answer, teeing what may be cached.

`forward` sends the request. It raises `errors.Unreachable` when the server could not be reached (the
caller marks it down and asks the cache) and `errors.CloudTimeout` when a connected server stayed silent
past the request timeout (the caller answers 504; cloud health is the prober's business). `_relay` streams
the answer back byte for byte and hands cacheable bodies and watch batches to the cache writer; list
bodies buffered for the cache count against the node-wide `lists` budget. It relays the reads asked for
as JSON with no filter (`AS_JSON`, kubelet's pods) too: nothing reads them on the way. `_relay_filtered` answers
filtered requests (`filters`) as JSON, filtered before the cache sees them, and fails closed: a body its
filters cannot read is never sent (a list or object becomes an error; a watch gets a 410 `ERROR` event
and ends, so the client relists).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from yurthub import budget, cache, errors, filters, replies, requestinfo, status, wire
from yurthub.hub import AS_JSON, Admitted, Hub

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
BODY_STEP = 64 * 1024
"""A request body longer than this goes to the cloud in steps of this size, the event loop free between
them (`_outgoing`)."""


def _upstream_headers(request: web.Request, names: tuple[str, ...] = ()) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones. A request with `names` asks for JSON; a filtered one
    (any name but `AS_JSON`) for plain, uncompressed JSON (`filters` read it; left alone, aiohttp would
    offer gzip and the apiserver compresses large lists)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if names:
        filtered = _filtered(names)
        drop = ("accept", "accept-encoding") if filtered else ("accept",)
        headers = {k: v for k, v in headers.items() if k.lower() not in drop}
        headers["Accept"] = wire.JSON
        if filtered:
            headers["Accept-Encoding"] = "identity"
    return headers


def _outgoing(body: bytes, headers: dict[str, str]) -> bytes | AsyncIterator[memoryview] | None:
    """What `forward` hands aiohttp as the request body. Given bytes, aiohttp encrypts and writes the whole
    body in one step of the event loop: megabytes (16 MiB on the plain port) keep every other client of the
    node, kubelet included, waiting that long. A longer body goes in `BODY_STEP` slices with the loop free
    between them, its length declared up front (so not chunked: kube-apiserver sees the same request)."""
    if len(body) <= BODY_STEP:
        return body or None
    headers["Content-Length"] = str(len(body))
    return _in_steps(memoryview(body))


async def _in_steps(body: memoryview) -> AsyncIterator[memoryview]:
    for start in range(0, len(body), BODY_STEP):
        if start:
            await asyncio.sleep(0)  # aiohttp's writer only waits when the socket is full: let others run
        yield body[start : start + BODY_STEP]


def _filtered(names: tuple[str, ...]) -> bool:
    """Whether a filter reads the answer: `AS_JSON` alone only negotiates JSON, whose bytes pass unread and
    stream like any other answer (read whole and decoded, kubelet's list of 1k pods took ten times as long)."""
    return any(n != AS_JSON for n in names)


async def forward(hub: Hub, request: web.Request, admitted: Admitted, server: str) -> web.StreamResponse:
    info, body, names = admitted.info, admitted.body, admitted.names
    session = hub.token_session if "Authorization" in request.headers else hub.node_session
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=hub.settings.cloud.heartbeat_timeout_s + 1,
        sock_read=None if info.verb == "watch" else hub.settings.cloud.request_timeout_s,
    )
    headers = _upstream_headers(request, names)
    started = time.monotonic()
    call = asyncio.ensure_future(
        session.request(
            request.method,
            server + request.raw_path,
            headers=headers,
            data=_outgoing(body, headers),
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
    except aiohttp.SocketTimeoutError:
        raise errors.CloudTimeout(f"nothing came for {hub.settings.cloud.request_timeout_s:g}s") from None
    except (TimeoutError, aiohttp.ClientConnectionError, OSError) as exc:
        raise errors.Unreachable(f"{type(exc).__name__}: {exc}") from None
    finally:
        hub.inflight.discard(abort)
    hub.metrics.upstream_latency.labels(server).observe(time.monotonic() - started)
    hub.metrics.request(info.component, info.verb, info.resource, "forwarded")
    hub.inflight.add(upstream.close)
    try:
        if _filtered(names) and upstream.status == 200:
            content_type = upstream.headers.get("Content-Type", "")
            plain = upstream.headers.get("Content-Encoding", "identity").lower() == "identity"
            if wire.encoding_of(content_type) is wire.Encoding.JSON and plain:
                return await _relay_filtered(hub, request, admitted, upstream)
            return replies.error(
                502,
                f"the cloud answered {info.resource} in {content_type or 'no content type'}, not plain JSON, so "
                "yurthub cannot filter it and sends nothing unfiltered",
            )
        if names and upstream.status == 200:
            content_type = upstream.headers.get("Content-Type", "")
            if wire.encoding_of(content_type) is not wire.Encoding.JSON:  # what the node rewrites must be JSON
                return replies.error(
                    502,
                    f"the cloud answered {info.resource} in {content_type or 'no content type'}, not the JSON "
                    "yurthub asked for (it rewrites them offline), so yurthub does not relay it",
                )
        return await _relay(hub, request, admitted, upstream)
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


class _Answer(web.StreamResponse):
    """A relayed answer of known length: its headers go out with its first bytes of body (or its end), in
    one write instead of two. Most answers are one object that arrives in one chunk, so this saves a
    system call and a wakeup of the client per request. (Without aiohttp's class attribute the headers
    simply go out first, as for any `StreamResponse`.)"""

    _send_headers_immediately = False


def _mirror(upstream: aiohttp.ClientResponse, info: requestinfo.RequestInfo) -> web.StreamResponse:
    """A response with the upstream's status and end-to-end headers, its length included. A stream's headers
    (a watch, a followed log: no length) go out at once: its client waits for them before any data comes."""
    known = upstream.content_length is not None and info.verb != "watch"
    kind = _Answer if known else web.StreamResponse
    response = kind(status=upstream.status, reason=upstream.reason)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_BY_HOP:
            response.headers.add(key, value)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    return response


async def _relay(
    hub: Hub, request: web.Request, admitted: Admitted, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    info, request_body = admitted.info, admitted.body
    response = _mirror(upstream, info)
    encoding = wire.encoding_of(upstream.headers.get("Content-Type", ""))
    # a cache agent's token is kept for the node's own component only: offline, only it is answered one
    token = cache.is_token_request(info) and bool(info.component) and info.component in hub.agents and admitted.node
    keep = cache.kept(info, hub.agents, node=admitted.node)
    tee = encoding is not None and upstream.status in (200, 201) and (keep or token)
    gunzip = (
        zlib.decompressobj(16 + zlib.MAX_WBITS)
        if tee and upstream.headers.get("Content-Encoding", "").lower() == "gzip"
        else None
    )
    await response.prepare(request)
    splitter = wire.FrameSplitter(encoding) if tee and encoding and info.verb == "watch" else None
    kept = bytearray()
    held = hub.lists_budget.hold()
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
            elif len(kept) + len(plain) <= MAX_CACHED_BODY and held.grow(len(plain)):
                kept += plain
            else:
                if len(kept) + len(plain) <= MAX_CACHED_BODY:
                    hub.metrics.overloaded.labels("lists").inc()
                    log.info("not caching a response: the list buffer budget is spent path=%s", info.path)
                tee = False
                kept = bytearray()
                held.release()
        complete = True
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()  # the client has its whole answer; what follows is the cache's business
        if tee and splitter is None and encoding is not None:
            await _keep(
                hub,
                info,
                upstream,
                encoding,
                bytes(kept),
                held,
                request_body,
                token=token,
                gunzipped=gunzip is not None,
            )
        elif upstream.status == 404 and info.verb == "get" and keep:
            await hub.record(info.path, cache.record_absent, hub.store, info)  # offline, the cloud's 404 too
    except (TimeoutError, aiohttp.ClientError) as exc:
        if not complete:
            log.info("upstream stream ended early path=%s error=%s", info.path, type(exc).__name__)
    finally:
        held.release()  # unless handed to the cache writer (`_keep`), which releases it once written
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _keep(
    hub: Hub,
    info: requestinfo.RequestInfo,
    upstream: aiohttp.ClientResponse,
    encoding: wire.Encoding,
    kept: bytes,
    held: budget.Hold,
    request_body: bytes,
    *,
    token: bool,
    gunzipped: bool,
) -> None:
    """Hand a whole relayed body to the cache writer, with the budget it holds (released once written)."""
    if upstream.content_length is not None and not gunzipped and len(kept) != upstream.content_length:
        hub.metrics.cache_write_errors.labels("truncated").inc()
        return
    handed = held.handover()
    if token:
        await hub.record(info.path, cache.record_token, hub.store, info, encoding, request_body, kept, held=handed)
    elif info.verb == "list":
        # A JSON list whose objects are the last ones stored for its view differs at most in its
        # resourceVersion (`wire.json_list_head`): the view only moves to it, its objects are not parsed again
        head = wire.json_list_head(kept) if encoding is wire.Encoding.JSON else None
        digest = await asyncio.to_thread(hub.digest, kept[head[1] :] if head else kept)  # megabytes: off the loop
        if hub.list_changed(cache.view_key(info, encoding), kept, digest):
            await hub.record(info.path, cache.record_list, hub.store, info, encoding, kept, held=handed)
        else:
            handed.release()
            if head is not None:
                await hub.record(info.path, cache.record_list_moved, hub.store, info, encoding, head[0])
    else:
        await hub.record(info.path, cache.record_object, hub.store, info, encoding, kept, held=handed)


async def _relay_filtered(
    hub: Hub, request: web.Request, admitted: Admitted, upstream: aiohttp.ClientResponse
) -> web.StreamResponse:
    """A 200 JSON response through its filters (`filters`): objects, lists and watch events; what is kept in
    the cache is what the client was sent. Fails closed: nothing its filters could not read reaches the
    client (see the module docstring)."""
    info, names = admitted.info, admitted.names
    tee = cache.kept(info, hub.agents, node=admitted.node)
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    if info.verb == "watch":
        return await _relay_filtered_watch(hub, request, info, upstream, names, headers, tee)
    body = bytearray()
    try:
        async for chunk in upstream.content.iter_any():
            if not admitted.held.grow(len(chunk)):
                hub.metrics.overloaded.labels("requests").inc()
                hub.metrics.request(info.component, info.verb, info.resource, "refused")
                return replies.overloaded("whole answers to filter", hub.settings.limits.retry_after_s)
            body += chunk
    except aiohttp.SocketTimeoutError:
        raise errors.CloudTimeout(f"the answer stalled for {hub.settings.cloud.request_timeout_s:g}s") from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise errors.Unreachable(f"response cut short: {type(exc).__name__}") from None
    out: bytes | None
    try:
        chain = await hub.chain(info, names)
        if info.verb == "list":
            out = filters.list_body(chain, info, bytes(body))
        else:
            out = filters.object_body(chain, info, bytes(body))
    except errors.Unfilterable as exc:
        log.warning("cannot filter yet path=%s error=%s", info.path, exc)
        return replies.error(
            503,
            f"yurthub cannot filter {info.resource} yet ({exc}) and sends nothing unfiltered; retry",
            None,
            {"Retry-After": str(hub.settings.limits.retry_after_s)},
        )
    except (errors.WireFormatError, ValueError) as exc:
        log.warning("response not filterable path=%s error=%s", info.path, exc)
        return replies.error(
            502,
            f"the cloud's answer for {info.resource} could not be filtered ({exc}); yurthub sends nothing unfiltered",
        )
    if out is None:
        return replies.error(
            404, f"{info.resource} {info.namespace}/{info.name} is not shown to {info.component}", "NotFound"
        )
    if tee and info.verb == "list":
        digest = await asyncio.to_thread(hub.digest, out)
        if hub.list_changed(cache.view_key(info, wire.Encoding.JSON), out, digest):
            await hub.record(info.path, cache.record_list, hub.store, info, wire.Encoding.JSON, out)
    elif tee and info.verb == "get":
        await hub.record(info.path, cache.record_object, hub.store, info, wire.Encoding.JSON, out)
    return await replies.send(request, web.Response(status=200, body=out, headers=headers))


def _filter_events(
    chain: filters.Chain, info: requestinfo.RequestInfo, frames: list[bytes]
) -> tuple[list[bytes], errors.Unfilterable | None]:
    """The events to send, up to the first one the filters cannot read (and the error it raised)."""
    kept: list[bytes] = []
    for frame in frames:
        try:
            out = filters.event_frame(chain, info, frame)
        except (errors.WireFormatError, ValueError) as exc:
            return kept, errors.Unfilterable(f"{type(exc).__name__}: {exc}")
        if out is not None:
            kept.append(out)
    return kept, None


def _expired(message: str) -> bytes:
    """A watch `ERROR` event with a 410 `Status`: client-go's reflector relists on it."""
    return b'{"type":"ERROR","object":' + status.body(410, message, "Expired").rstrip(b"\n") + b"}\n"


async def _relay_filtered_watch(
    hub: Hub,
    request: web.Request,
    info: requestinfo.RequestInfo,
    upstream: aiohttp.ClientResponse,
    names: tuple[str, ...],
    headers: dict[str, str],
    tee: bool,
) -> web.StreamResponse:
    """Filter a watch event by event. An event its filters cannot read ends the watch with a 410 `ERROR`
    event (the client relists; the unreadable event is never sent)."""
    response = web.StreamResponse(status=200, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    splitter = wire.FrameSplitter(wire.Encoding.JSON)
    try:
        async for chunk in upstream.content.iter_any():
            frames = splitter.feed(chunk)
            if not frames:
                continue
            chain = await hub.chain(info, names)
            kept, failure = _filter_events(chain, info, frames)
            if kept:
                if not await _write(response, b"".join(f + b"\n" for f in kept), info):
                    break
                if tee:
                    await hub.record(info.path, cache.record_events, hub.store, info, wire.Encoding.JSON, kept)
            if failure is not None:
                raise failure
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.info("upstream stream ended early path=%s error=%s", info.path, type(exc).__name__)
    except (errors.Unfilterable, errors.WireFormatError, ValueError) as exc:
        log.warning("watch event not filterable, ending the watch path=%s error=%s", info.path, exc)
        message = f"yurthub could not filter an event of this watch ({exc}); relist"
        await _write(response, _expired(message), info)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
