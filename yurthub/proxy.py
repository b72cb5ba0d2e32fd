"""The request path's routing policy: forward to the cloud while it is healthy, answer from the cache while not.

handle(request)
  ├── refused up front: over-long headers (431), a path no client sends (400), a door request without a
  │                     token (401), a filtered request that does not take JSON (406), a body too big (413)
  ├── cloud healthy → `remote.forward`: stream the response back byte for byte, tee cacheable ones into the
  │                   cache (a connection failure marks the server down and falls through to the cache)
  └── cloud away    → `local.serve`: GET/LIST from the cache, WATCH held open until the cloud returns,
                      kubelet's Lease and node status answered here, Events into the outbox,
                      everything else a 503 Status that says why

Filtered requests (`filters`: a component's services/endpointslices get, list and watch) are fetched and
answered as JSON, filtered before the cache sees them; offline they are answered from that JSON. On the HTTPS
door (`door`) a pod's own token is required and forwarded, and the request's cache scope is its token's hash.
The shared state lives in `hub.Hub`.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from yurthub import cache, errors, local, remote, replies, requestinfo, wire
from yurthub.hub import Hub

__all__ = ["MAX_HEADER", "MAX_REQUEST_BODY", "Hub", "handle"]
"""`Hub` is named here too: the rest of yurthub knows the request path as `proxy`."""

MAX_REQUEST_BODY = 16 * 1024 * 1024
MAX_HEADER = 16 * 1024
"""Longest request header accepted; aiohttp's own parser stops at 64 KiB (`server.PARSER_LIMIT`)."""


async def handle(hub: Hub, request: web.Request, *, door: bool = False) -> web.StreamResponse:
    """Route one request. On the HTTPS `door` a pod's own bearer token is required: it is forwarded as the
    pod's identity, and the cache scope of the request is that token's (`cache.token_scope`)."""
    too_big = [k for k, v in request.headers.items() if len(k) + len(v) > MAX_HEADER]
    if too_big:
        return replies.error(
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
        return replies.error(400, str(exc))
    if door:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            hub.metrics.requests.labels("", info.verb, info.resource, "refused").inc()
            return replies.error(401, "the HTTPS door of yurthub needs the pod's own bearer token", "Unauthorized")
        info = dataclasses.replace(info, component=cache.token_scope(token.strip()))
    names = hub.filter_names(info)
    if names and wire.Encoding.JSON not in cache.accepted(request.headers.get("Accept", "")):
        return replies.error(
            406,
            f"yurthub filters {info.resource} for {info.component} and sends them as JSON, "
            "which this client does not accept",
            "NotAcceptable",
        )
    if request.content_length is not None and request.content_length > MAX_REQUEST_BODY:
        return replies.error(413, f"request body of {request.content_length} bytes exceeds {MAX_REQUEST_BODY}")
    body = await request.read() if request.can_read_body else b""
    server = hub.servers.pick()
    if server is not None:
        try:
            return await remote.forward(hub, request, info, server, body, names)
        except errors.Unreachable as exc:
            if hub.servers.record(server, False, str(exc)):
                hub.cloud_changed()
            hub.metrics.cloud_healthy.labels(server).set(0)
    return await local.serve(hub, request, info, body, names)
