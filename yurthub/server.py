"""Wiring: build the hub from settings, serve the proxy and the serve port, run the background loops.

Background work lives in one TaskGroup with named tasks: the health prober, the outbox courier, the
identity keeper and the token-scope sweeper. Each loop is a thin wrapper around one step (`probe_once`,
`deliver_once`, `Identity.step`, `sweep_once`) that tests can drive directly. In CSR mode with no
certificate on disk yet, `serve` first obtains one (a node joining), then listens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import http_exceptions, web, web_protocol
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from yurthub import (
    cache,
    config,
    door,
    errors,
    health,
    identity,
    memory,
    metrics,
    outbox,
    proxy,
    replies,
    statuses,
    storage,
)

log = logging.getLogger(__name__)
HUB = web.AppKey("hub", proxy.Hub)
PARSER_LIMIT = 64 * 1024
"""Let headers up to 64 KiB reach the handler, which refuses long ones with a Status (aiohttp's own 400 is
plain text)."""


async def probe_once(hub: proxy.Hub, attempts: int | None = None) -> None:
    """Probe every server once (`/readyz` with the node identity) and record the outcomes."""
    cloud = hub.settings.cloud
    for state in hub.servers.states:
        ok, detail = False, ""
        for _ in range(max(1, attempts or cloud.heartbeat_failed_retry)):
            try:
                async with asyncio.timeout(cloud.heartbeat_timeout_s):
                    async with hub.node_session.get(f"{state.server}/readyz") as resp:
                        ok = resp.status == 200
                        detail = f"readyz answered {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
            if ok:
                break
        hub.metrics.cloud_healthy.labels(state.server).set(1 if ok else 0)
        if hub.servers.record(state.server, ok, detail):
            hub.cloud_changed()


async def deliver_once(hub: proxy.Hub) -> int:
    """Send queued writes, oldest first, while the cloud takes them; return how many left the outbox."""
    sent = 0
    while hub.servers.is_healthy:
        write = await hub.in_writer(hub.outbox.peek)
        server = hub.servers.pick()
        if write is None or server is None:
            break
        if write.key:  # a pod's latest status: delivered against the cloud's current pod (`statuses`)
            if not await statuses.deliver(hub, server, write):
                break
            await hub.in_writer(_pop, hub)
            hub.metrics.outbox_delivered.inc()
            sent += 1
            continue
        try:
            async with asyncio.timeout(hub.settings.cloud.request_timeout_s):
                async with hub.node_session.request(
                    write.method,
                    server + write.path_qs,
                    data=write.body,
                    headers={"Content-Type": write.content_type, "User-Agent": f"{write.component}/outbox"},
                ) as resp:
                    code = resp.status
                    text = (await resp.read())[:300]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("outbox delivery paused error=%s", type(exc).__name__)
            break
        if code >= 500 or code == 429:
            break
        if code >= 400:
            log.warning("outbox write refused by the cloud status=%s path=%s body=%r", code, write.path_qs, text)
        await hub.in_writer(_pop, hub)
        hub.metrics.outbox_delivered.inc()
        sent += 1
    hub.metrics.outbox_depth.set(hub.outbox_depth)
    return sent


def _pop(hub: proxy.Hub) -> None:
    """On the writer thread: drop the delivered write and note the depth (the event loop never asks the disk)."""
    hub.outbox.pop()
    hub.outbox_depth = len(hub.outbox)


async def sweep_once(hub: proxy.Hub, now: float | None = None) -> int:
    """Remove the cache scopes of tokens unused for `token_scope_idle_s` (on the writer thread); how many.

    Only once the cloud has been reachable for `token_scope_idle_s` without a break: offline, kubelet keeps
    handing pods the same cached token and a held watch makes no further request, so a scope stays in use
    past its token's lifetime without leaving a trace, and after the cloud returns its pods need a moment to
    call again. Idle time is therefore counted only while the cloud answers (none before its last return).
    """
    idle_s = hub.settings.limits.token_scope_idle_s
    now = time.time() if now is None else now
    if not hub.servers.is_healthy or now - hub.servers.cloud_since < idle_s:
        return 0
    try:
        removed: int = await hub.in_writer(cache.expire_idle_scopes, hub.store, now, idle_s)
    except errors.StorageError as exc:
        log.warning("cannot remove idle token scopes error=%s", exc)
        return 0
    if removed:
        log.info("removed idle token scopes count=%d idle_s=%g", removed, idle_s)
    return removed


async def _sweeper(hub: proxy.Hub) -> None:
    while True:
        await asyncio.sleep(hub.settings.limits.sweep_interval_s)
        await sweep_once(hub)


async def _prober(hub: proxy.Hub) -> None:
    while True:
        await probe_once(hub)
        await asyncio.sleep(hub.settings.cloud.heartbeat_interval_s)


async def _door_keeper(settings: config.DoorSettings, cert: door.ServingCert, runner: web.AppRunner) -> None:
    """Open the HTTPS door once its interface is up and its certificate loads; then follow the certificate."""
    interface_ready, site = not settings.manage_interface, None
    while True:
        if not interface_ready:
            try:
                await asyncio.to_thread(door.interface_up, settings)
                interface_ready = True
            except (door.InterfaceError, OSError, subprocess.SubprocessError) as exc:
                log.error("door interface not ready error=%s", exc)
        if await asyncio.to_thread(cert.reload) and site is None and interface_ready:
            site = web.TCPSite(
                runner, settings.address, settings.port, ssl_context=cert.server_context, shutdown_timeout=1
            )
            await site.start()
            log.info("door open address=%s:%d", settings.address, settings.port)
        elif site is None and interface_ready and cert.current is not None:
            cert.mark = None  # loaded before the interface was up: open on the next round
        await asyncio.sleep(door.POLL_S)


async def _courier(hub: proxy.Hub) -> None:
    while True:
        if hub.outbox_depth and hub.servers.is_healthy:
            await deliver_once(hub)
        await asyncio.sleep(1)


def status_report(hub: proxy.Hub, usage: list[storage.Usage], ids: identity.Identity) -> dict[str, object]:
    return {
        "node": hub.settings.node_name,
        "certificates": ids.report(),
        "cloud": {"reachable": hub.servers.is_healthy, "since": _iso(hub.servers.cloud_since)},
        "servers": [{"server": s.server, "healthy": s.healthy, "since": _iso(s.since)} for s in hub.servers.states],
        "cache": {
            "path": hub.settings.cache.disk_cache_path,
            "writable": hub.cache_writable,
            "counts": dataclasses.asdict(hub.store.counts()),
            "maxViewsPerScope": hub.settings.limits.max_views_per_scope,
            "tokenScopeIdleSeconds": hub.settings.limits.token_scope_idle_s,
            "entries": [u.__dict__ for u in usage],
        },
        "limits": {
            "listDigests": len(hub.last_lists),
            "listDigestsCap": hub.settings.limits.max_list_digests,
            "memoryHeld": memory_held(hub),
            "memoryCaps": {
                "requests": hub.settings.limits.max_bytes_in_memory,
                "lists": hub.settings.limits.max_list_buffer_bytes,
            },
            "inflight": inflight_report(hub),
        },
        "outbox": {
            "depth": len(hub.outbox),
            "capacity": hub.outbox.capacity,
            "dropped": hub.outbox.dropped,
            "oldest": [
                {"method": w.method, "path": w.path_qs, "component": w.component, "bytes": len(w.body)}
                for w in hub.outbox.entries(10)
            ],
        },
    }


def inflight_report(hub: proxy.Hub) -> dict[str, object]:
    """Non-watch requests in flight per class and their caps; the door's per-client share, the most any one
    door client holds, and how many clients hold any; the pods' and other clients' requests served at once,
    its cap, and how many wait their turn per class (`fairness`)."""
    return {
        "now": dict(hub.seats.inflight),
        "caps": dict(hub.seats.limits),
        "perClientCap": hub.seats.per_client,
        "busiestClient": hub.seats.busiest(),
        "clients": len(hub.seats.clients),
        "servingNonNode": hub.seats.served,
        "servingNonNodeCap": hub.seats.serving,
        "waiting": {cls: hub.seats.waiting(cls) for cls in ("pod", "other")},
        "queueWaitSeconds": hub.settings.limits.max_queue_wait_s,
    }


def memory_held(hub: proxy.Hub) -> dict[str, int]:
    return {"requests": hub.requests_budget.held, "lists": hub.lists_budget.held}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _serve_app(hub: proxy.Hub, usage_cache: list[list[storage.Usage]], ids: identity.Identity) -> web.Application:
    async def healthz(_r: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def readyz(_r: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def refresh() -> list[storage.Usage]:
        usage: list[storage.Usage] = await hub.in_writer(hub.store.usage)
        usage_cache[0] = usage
        return usage

    async def metrics_page(_r: web.Request) -> web.Response:
        await refresh()
        hub.metrics.outbox_depth.set(hub.outbox_depth)
        hub.metrics.outbox_dropped.set(hub.outbox.dropped)
        for name, held in memory_held(hub).items():
            hub.metrics.memory_held.labels(name).set(held)
        hub.metrics.bounded.labels("list_digests").set(len(hub.last_lists))
        counts: storage.Counts = await hub.in_writer(hub.store.counts)
        for table, n in dataclasses.asdict(counts).items():
            hub.metrics.bounded.labels(table).set(n)
        ids.publish()
        return web.Response(body=generate_latest(hub.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_page(_r: web.Request) -> web.Response:
        report = await hub.in_writer(status_report, hub, await refresh(), ids)
        return web.Response(text=json.dumps(report, indent=2), content_type="application/json")

    app = web.Application()
    app[HUB] = hub
    app.router.add_get("/v1/healthz", healthz)
    app.router.add_get("/v1/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/v1/status", status_page)
    return app


ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
"""The methods aiohttp's parser takes (kube-apiserver serves no other)."""
REFUSAL_LOG_S = 10.0
"""At most one log line per this many seconds about requests aiohttp's parser refused (a flood of them is
counted in the next line, not logged one by one)."""


class _Connection(web_protocol.RequestHandler):
    """aiohttp's per-connection protocol, answering a request its HTTP parser refused (an unknown or invalid
    method, a malformed request line or header) with a Kubernetes `Status` and at most one short log line,
    instead of aiohttp's plain-text answer and a traceback per request (`ERROR` from the second request
    of a kept-alive connection on)."""

    refused = 0
    logged_at = float("-inf")

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, http_exceptions.HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        cls = type(self)
        cls.refused += 1
        now = time.monotonic()
        if now - cls.logged_at >= REFUSAL_LOG_S:
            log.info(
                "refused requests yurthub cannot parse count=%d peer=%s error=%s",
                cls.refused,
                request.remote,
                type(exc).__name__,
            )
            cls.refused, cls.logged_at = 0, now
        if isinstance(exc, http_exceptions.BadHttpMethod):
            answer = replies.error(
                405, f"yurthub serves the HTTP methods {ALLOW} only", "MethodNotAllowed", {"Allow": ALLOW}
            )
        else:
            code = exc.code if 400 <= exc.code < 500 else 400
            answer = replies.error(code, f"yurthub cannot parse this HTTP request ({type(exc).__name__})")
        answer.force_close()
        return answer


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _Connection(self, loop=asyncio.get_running_loop(), **self._kwargs)


class Runner(web.AppRunner):
    """An `AppRunner` whose connections answer what aiohttp's parser refuses as `_Connection` does."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        made.__class__ = _Server  # the same server, each connection made by `_Server.__call__`
        return made


ANY_PATH = r"/{tail:[\s\S]*}"
"""Every path, a decoded newline (`%0a`) included: aiohttp routes on the decoded path and `.` stops at a
newline, which would leave such a request to aiohttp's plain-text 404 instead of yurthub's 400 `Status`."""


def _proxy_runner(hub: proxy.Hub) -> web.AppRunner:
    """The plain proxy port's app: every path goes through the routing policy."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(hub, request)

    app = web.Application(client_max_size=hub.settings.limits.max_request_body)
    app[HUB] = hub
    app.router.add_route("*", ANY_PATH, handler)
    return Runner(app, access_log=None, max_line_size=PARSER_LIMIT, max_field_size=PARSER_LIMIT)


def _door_runner(hub: proxy.Hub) -> web.AppRunner:
    """The HTTPS door's app: the same routing as the proxy port, with a pod's own token required."""

    async def door_handler(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(hub, request, door=True)

    app = web.Application(client_max_size=hub.settings.limits.max_door_request_body)
    app[HUB] = hub
    app.router.add_route("*", ANY_PATH, door_handler)
    return Runner(app, access_log=None, max_line_size=PARSER_LIMIT, max_field_size=PARSER_LIMIT)


def notify_systemd(message: str) -> None:
    """sd_notify(3): tell systemd we are ready (Type=notify units); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


async def _listen(settings: config.HubSettings, runners: list[web.AppRunner]) -> None:
    """The proxy and the serve port (the door opens later, once its certificate is there)."""
    listen = settings.listen
    await web.TCPSite(runners[0], listen.bind_address, listen.proxy_port, shutdown_timeout=1).start()
    await web.TCPSite(runners[1], listen.bind_address, listen.serve_port, shutdown_timeout=1).start()
    log.info(
        "yurthub serving node=%s proxy=%s:%d serve=%s:%d servers=%s cache=%s",
        settings.node_name,
        listen.bind_address,
        listen.proxy_port,
        listen.bind_address,
        listen.serve_port,
        ",".join(settings.cloud.servers),
        settings.cache.disk_cache_path,
    )


def _client_contexts(ids: identity.Identity, settings: config.HubSettings) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The node's client TLS context and the one for requests with their own token. Blocking (reads the
    CA, certificate and key files): in a thread."""
    return ids.node_tls(), ssl.create_default_context(cafile=settings.identity.ca_file)


def _open_disk(settings: config.HubSettings) -> tuple[storage.SqliteStorage, outbox.Outbox, bool]:
    """The cache (integrity-checked), the outbox, and whether the cache holds anything. Blocking: in a thread."""
    store = storage.SqliteStorage(
        Path(settings.cache.disk_cache_path), max_views_per_scope=settings.limits.max_views_per_scope
    )
    box = outbox.Outbox(Path(settings.outbox.path), settings.outbox.capacity)
    return store, box, bool(store.usage())


async def serve(settings: config.HubSettings, stop: asyncio.Event | None = None) -> None:
    """Run yurthub until `stop` is set. Nothing blocking runs on the event loop, at start either: files,
    TLS contexts and the cache's integrity check are read and built in threads."""
    stop = stop or asyncio.Event()
    stats = metrics.Metrics(settings.cache.cache_agents)
    ids = await asyncio.to_thread(identity.Identity, settings, stats)
    if ids.client.summary is None:
        log.info("no client certificate yet node=%s: asking for one with the bootstrap token", settings.node_name)
        await ids.obtain_client(stop)
        if stop.is_set():
            return
    node_tls, token_tls = await asyncio.to_thread(_client_contexts, ids, settings)
    store, box, cached = await asyncio.to_thread(_open_disk, settings)
    usage_cache: list[list[storage.Usage]] = [[]]
    stats.watch_cache(lambda: usage_cache[0])
    servers = health.Servers(settings.cloud, start_healthy=not cached)
    for server in settings.cloud.servers:
        stats.cloud_healthy.labels(server).set(0 if cached else 1)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=node_tls, limit=0)) as node_session,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=token_tls, limit=0)) as token_session,
    ):
        hub = proxy.Hub(settings, servers, store, box, stats, node_session, token_session)
        hub.outbox_depth = await hub.in_writer(len, box)

        runners = [_proxy_runner(hub), Runner(_serve_app(hub, usage_cache, ids), access_log=None)]
        door_cert = await asyncio.to_thread(door.ServingCert, settings.door) if settings.door.enabled else None
        if door_cert is not None:
            runners.append(_door_runner(hub))
        try:
            for runner in runners:
                await runner.setup()
            if not cached:
                # Nothing to answer from yet: learn the cloud's state before the first client asks.
                await probe_once(hub, attempts=1)
            await _listen(settings, runners)
            notify_systemd("READY=1")
            async with asyncio.TaskGroup() as tasks:
                loops = [
                    tasks.create_task(_prober(hub), name="health-prober"),
                    tasks.create_task(_courier(hub), name="outbox-courier"),
                    tasks.create_task(identity.run(hub, ids), name="identity"),
                    tasks.create_task(_sweeper(hub), name="token-scope-sweeper"),
                ]
                if door_cert is not None:
                    keeper = _door_keeper(settings.door, door_cert, runners[2])
                    loops.append(tasks.create_task(keeper, name="door-keeper"))
                await stop.wait()
                for loop in loops:
                    loop.cancel()
        finally:
            for runner in runners:
                await runner.cleanup()
            if settings.door.enabled and settings.door.manage_interface:
                await asyncio.to_thread(door.interface_down, settings.door)
            await ids.close()
            if hub.node_session is not node_session:
                await hub.node_session.close()
            hub.writer.shutdown(wait=True)
            store.close()
            box.close()


def run(settings: config.HubSettings) -> int:
    """Serve until SIGTERM or SIGINT, on uvloop: the same asyncio API on libuv, with its own transports, TLS
    and timers. yurthub's request path is mostly event-loop plumbing (two sockets and a parser per hop), so
    it is where uvloop saves the most (README, yurthub's figures)."""
    memory.settle()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    uvloop.run(main())
    return 0
