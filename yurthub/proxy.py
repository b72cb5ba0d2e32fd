"""The request path's routing policy: forward to the cloud while it is healthy, answer from the cache while not.

handle(request)
  ├── admit: refuse over-long headers (431), two Authorization headers or a path no client sends (400), a
  │          door request without a token (401), a filtered request that does not take JSON (406), a body
  │          whose first bytes are not what its Content-Type says (400, before the rest is read), a body
  │          too big (413) or one the node-wide memory budget has no room for (429 with Retry-After), or a
  │          non-watch request past its class's limit in flight or, on the door, past one pod's share of
  │          it (429 with Retry-After, `fairness`: the node's own components, a cache agent's name from a
  │          process of a trusted uid (`peers`), are never limited, pods and other local clients are);
  │          then a pod's or other client's request waits its turn for one of the few seats they share
  │          (429 with Retry-After if it does not come in time), so however many of them are admitted,
  │          only a few are served at once next to the node's own
  ├── cloud healthy → `remote.forward`: stream the response back byte for byte, tee cacheable ones into the
  │                   cache. A connection failure marks the server down and falls through to the cache; a
  │                   server that is connected but silent past the request timeout gets this one request a
  │                   504 and changes nothing else.
  └── cloud away    → `local.serve`: GET/LIST from the cache, WATCH held open until the cloud returns,
                      kubelet's Lease and node status answered here, Events into the outbox,
                      everything else a 503 Status that says why

Cache scope: a request's component (its User-Agent) unless it carries its own credentials. On the HTTPS door
(`door`) a pod's own bearer token is required and forwarded; on the plain port a request may carry its own
`Authorization`, which is forwarded too. Either way the request's cache scope is that token's hash
(`cache.token_scope`), so what a token fetched is read back only with that token.

Filtered requests (`filters`: a component's services/endpointslices get, list and watch, chosen by the
User-Agent) are fetched and answered as JSON, filtered before the cache sees them; offline they are
answered from that JSON. kubelet's pods, and endpoint slices and endpoints on the door, are negotiated as
JSON the same way with no filter (`hub.AS_JSON`): what the node rewrites offline must be JSON. The shared
state lives in `hub.Hub`.
"""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from yurthub import budget, cache, errors, fairness, local, remote, replies, requestinfo, wire
from yurthub.hub import AS_JSON, Admitted, Hub

__all__ = ["MAX_HEADER", "Hub", "handle"]
"""`Hub` is named here too: the rest of yurthub knows the request path as `proxy`."""

MAX_HEADER = 16 * 1024
"""Longest request header accepted; aiohttp's own parser stops at 64 KiB (`server.PARSER_LIMIT`)."""
READ_CHUNK = 64 * 1024


async def handle(hub: Hub, request: web.Request, *, door: bool = False) -> web.StreamResponse:
    """Route one request (the routing policy in one screen; the module docstring says why)."""
    admitted = await admit(hub, request, door=door)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    info = admitted.info
    if cache.is_token_scope(info.component):
        cache.note_use(hub.store, info)  # a pod holding a quiet watch still uses its scope (memory only)
    try:
        server = hub.servers.pick()
        if server is not None:
            try:
                return await remote.forward(hub, request, admitted, server)
            except errors.CloudTimeout as exc:
                hub.metrics.request(info.component, info.verb, info.resource, "timeout")
                return replies.error(
                    504,
                    f"the cloud did not answer {info.verb} {info.path} in time ({exc}); the cloud is still "
                    "considered reachable: retry",
                    "Timeout",
                )
            except errors.Unreachable as exc:
                hub.server_failed(server, str(exc))
        return await local.serve(hub, request, admitted)
    finally:
        admitted.held.release()
        admitted.seat.release()


def _credentials(values: list[str]) -> str:
    """The secret an `Authorization` header carries: a bearer token, or the whole value for other schemes."""
    scheme, _, token = values[0].partition(" ") if values else ("", "", "")
    if scheme.lower() == "bearer":
        return token.strip()
    return values[0].strip() if values else ""


async def admit(hub: Hub, request: web.Request, *, door: bool) -> Admitted | web.Response:
    """Parse and scope one request and read its body within the limits, or answer why not."""
    limits = hub.settings.limits
    too_big = [k for k, v in request.headers.items() if len(k) + len(v) > MAX_HEADER]
    if too_big:
        return replies.error(
            431, f"request header {too_big[0]} is longer than {MAX_HEADER} bytes", "RequestHeaderFieldsTooLarge"
        )
    auths = request.headers.getall("Authorization", [])
    try:
        if len(auths) > 1:
            raise errors.BadRequest("more than one Authorization header: send exactly one")
        info = requestinfo.parse(
            request.method,
            request.raw_path.split("?", 1)[0],
            dict(request.query),
            request.headers.get("User-Agent", ""),
        )
    except errors.BadRequest as exc:
        hub.metrics.request("", request.method.lower(), "", "refused")
        return replies.error(400, str(exc))
    # Filters go by the User-Agent, on both ports and whatever credentials (kube-proxy and CoreDNS reach the
    # door with their own tokens); a filter only hides or points endpoints at this node, never adds access.
    names = hub.filter_names(info)
    if door:
        names += tuple(n for n in hub.door_names(info) if n not in names)
    credentials = _credentials(auths)
    if door and not (credentials and auths[0].lower().startswith("bearer ")):
        hub.metrics.request("", info.verb, info.resource, "refused")
        return replies.error(401, "the HTTPS door of yurthub needs the pod's own bearer token", "Unauthorized")
    if credentials:
        filtered = tuple(n for n in names if n != AS_JSON)  # JSON alone changes no bytes: no own scope
        info = dataclasses.replace(info, component=cache.token_scope(credentials, filtered))
    if names and wire.Encoding.JSON not in cache.accepted(request.headers.get("Accept", "")):
        return replies.error(
            406,
            f"yurthub filters {info.resource} for {request.headers.get('User-Agent', '')} and sends them as JSON, "
            "which this client does not accept",
            "NotAcceptable",
        )
    limit = limits.max_door_request_body if door else limits.max_request_body
    if request.content_length is not None and request.content_length > limit:
        return replies.error(413, f"request body of {request.content_length} bytes exceeds {limit}")
    cls = fairness.classify(
        door=door,
        component=info.component,
        agents=hub.agents,
        own_credentials=bool(auths),
        trusted_peer=lambda: hub.peers.trusted(request.transport),
    )
    if info.verb == "watch":
        seat: fairness.Seat | fairness.Refusal = fairness.uncounted(cls)
    else:
        # on the door, a pod's address and its token are each a client with a share of the class (`fairness`)
        clients = (f"address:{request.remote}", cache.token_scope(credentials)) if door else ()
        seat = hub.seats.take(cls, clients, long_running=fairness.long_running(info.verb, info.subresource))
    if not isinstance(seat, fairness.Seat):
        return _busy(hub, info, cls, seat)
    if not seat.ready and not await _turn(seat, limits.max_queue_wait_s):
        return _busy(hub, info, cls, "wait")
    if request.transport is None or request.transport.is_closing():
        seat.release()  # the client left while its request waited: its turn goes to the next one
        # nobody reads this answer (nginx's "client closed request" code, as a Status all the same)
        return replies.error(499, "the client closed its connection before its request was served", "Gone")
    held = hub.requests_budget.hold()
    try:
        body = await _read_body(hub, request, info, limit, held)
    except BaseException:
        held.release()  # a client gone mid-body must not keep its bytes counted
        seat.release()
        raise
    if isinstance(body, web.Response):
        held.release()
        seat.release()
        return body
    return Admitted(info, names, body, held, seat)


async def _read_body(
    hub: Hub, request: web.Request, info: requestinfo.RequestInfo, limit: int, held: budget.Hold
) -> bytes | web.Response:
    """The request body, each chunk counted in `held` as it arrives, or the 400, 413 or 429 that refuses it.

    A body whose first bytes are not what its Content-Type says (`wire.body_refusal`) is refused as soon as
    they arrive, before the rest is read or anything is forwarded: kube-apiserver would refuse it too.

    A declared length is checked against the budget before anything is read, so a flood of big bodies is
    refused without reading them."""
    if request.content_length:
        if not held.grow(request.content_length):
            return _overloaded(hub, info)
        held.release()  # counted again below, as the bytes arrive
    body = bytearray()
    content_type = request.headers.get("Content-Type", "")
    if request.can_read_body:
        while chunk := await request.content.read(READ_CHUNK):
            if len(body) + len(chunk) > limit:
                return replies.error(413, f"request body exceeds {limit} bytes")
            if not held.grow(len(chunk)):
                return _overloaded(hub, info)
            checked = len(body) < wire.BODY_HEAD
            body += chunk
            refusal = wire.body_refusal(content_type, bytes(body[: wire.BODY_HEAD])) if checked else None
            if refusal is not None:
                hub.metrics.request(info.component, info.verb, info.resource, "refused")
                return replies.error(400, f"{refusal}: send a body of the type the Content-Type header names")
    return bytes(body)


async def _turn(seat: fairness.Seat, wait_s: float) -> bool:
    """Wait until `seat` may be served (`fairness`: pods and other local clients share a few seats, in arrival
    order, the node's own components none); False, with the seat given back, after `wait_s` seconds. Waiting
    costs no body read and no cloud connection: the body stays in the socket until the request's turn.
    A client that leaves while its request waits keeps its place until then (aiohttp does not cancel a
    handler when its client goes); the caller checks the connection when the turn comes."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    seat.wake = wake
    try:
        async with asyncio.timeout(wait_s):
            await ready
    except TimeoutError:
        if seat.ready:  # its turn came as the wait ended: serve it
            return True
        seat.release()
        return False
    except BaseException:
        seat.release()  # the client went away while waiting
        raise
    return True


def _overloaded(hub: Hub, info: requestinfo.RequestInfo) -> web.Response:
    hub.metrics.overloaded.labels("requests").inc()
    hub.metrics.request(info.component, info.verb, info.resource, "refused")
    return replies.overloaded("request bodies", hub.settings.limits.retry_after_s)


def _busy(hub: Hub, info: requestinfo.RequestInfo, cls: fairness.Class, why: fairness.Refusal) -> web.Response:
    """429 at once, before any body is read or the cloud is asked: a class's flood stays with its senders."""
    hub.metrics.refused.labels(cls, why).inc()
    hub.metrics.request(info.component, info.verb, info.resource, "refused")
    retry = hub.settings.limits.retry_after_s
    if why == "wait":
        message = (
            f"yurthub serves at most {hub.seats.serving} requests of pods and other local clients at once, the "
            f"node's own components first, and this one waited its turn {hub.settings.limits.max_queue_wait_s:g}s "
            f"without getting it: retry in {retry}s"
        )
    elif why == "client":
        message = (
            f"this pod (its address or its token) has as many requests in flight on yurthub's HTTPS door as one "
            f"client may ({hub.seats.per_client}); retry in {retry}s"
        )
    else:
        message = (
            f"yurthub has as many {cls} requests in flight as it allows ({hub.seats.limits[cls]}); the node's own "
            f"components go first: retry in {retry}s"
        )
    return replies.error(429, message, "TooManyRequests", {"Retry-After": str(retry)})
