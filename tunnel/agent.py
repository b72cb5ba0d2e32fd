"""`yurt-tunnel-agent`: dials out from the edge node to every tunnel server replica and, on a replica's
request, opens TCP connections to allow-listed ports of this node only.

Replicas: each `--server-addr` is resolved, and every address it resolves to is dialled (a headless
Service name gives one address per replica). A replica answers with its id, so two addresses reaching the
same replica keep one connection. Names are resolved again every `resolve_interval_s` to find new replicas.

Each link is kept up on its own: websocket pings every `keepalive_s`; after a failure it is dialled again
after a jittered, doubling delay (from `backoff_initial_s` up to `backoff_max_s`, reset once connected), so
thousands of agents coming back after a server restart spread out instead of arriving at once. The client
certificate file is read again on every dial, so kubelet's certificate rotation is followed.

What the cloud may reach is fixed here, not by the server: ports in `allowed_ports` on loopback, the node
name and `node_addresses`. Anything else is refused with 403 and a reason, so the agent is never an open
proxy into the edge network.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import ssl
import time
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from tunnel import config, connect, endpoints, errors, session
from tunnel.metrics import AgentMetrics, Live

log = logging.getLogger(__name__)
LOOPBACK = frozenset({"127.0.0.1", "::1"})


@dataclasses.dataclass
class Link:
    endpoint: str
    server_id: str
    tunnel: session.Session
    since: float = dataclasses.field(default_factory=time.time)


def next_delay(current: float, settings: config.AgentSettings) -> tuple[float, float]:
    """(seconds to wait now, next base delay): equal jitter over a doubling base, capped."""
    wait = current / 2 + random.uniform(0, current / 2)  # noqa: S311 - jitter, not cryptography
    return wait, min(current * 2, settings.backoff_max_s)


def dial_host(target: connect.Target, settings: config.AgentSettings) -> str:
    """Where a permitted target is dialled on this node; `DialFailed(403)` for anything not permitted."""
    if target.port not in settings.allowed_ports:
        allowed = ",".join(str(p) for p in sorted(settings.allowed_ports))
        raise errors.DialFailed(
            403, f"port {target.port} is not open to the tunnel on node {settings.node_name} (allowed: {allowed})"
        )
    if target.host in (settings.node_name, "localhost"):
        return "127.0.0.1"
    if target.host in LOOPBACK or target.host in settings.node_addresses:
        return target.host
    raise errors.DialFailed(403, f"{target.host} is not an address of node {settings.node_name}")


class Agent:
    def __init__(self, settings: config.AgentSettings) -> None:
        self.settings = settings
        self.metrics = AgentMetrics(self._live)
        self.links: dict[str, Link] = {}
        """Live links by server id."""
        self._closed_in = 0
        self._closed_out = 0
        self._last_error: dict[str, str] = {}

    # --- state ------------------------------------------------------------------------------------

    def _live(self) -> Live:
        links = list(self.links.values())
        return Live(
            peers=len(links),
            streams=sum(link.tunnel.open_streams for link in links),
            bytes_in=self._closed_in + sum(link.tunnel.bytes_in for link in links),
            bytes_out=self._closed_out + sum(link.tunnel.bytes_out for link in links),
        )

    def ready(self) -> tuple[bool, str]:
        if self.links:
            return True, f"ok: connected to {len(self.links)} server replica(s)"
        return False, "not connected to any tunnel server"

    def status(self) -> dict[str, Any]:
        return {
            "node": self.settings.node_name,
            "allowedPorts": sorted(self.settings.allowed_ports),
            "servers": [
                {
                    "server": link.server_id,
                    "endpoint": link.endpoint,
                    "connectedSince": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(link.since)),
                    "streams": link.tunnel.open_streams,
                    "streamsOpened": link.tunnel.streams_opened,
                }
                for link in sorted(self.links.values(), key=lambda link: link.server_id)
            ],
            "lastErrors": dict(sorted(self._last_error.items())),
        }

    # --- links ------------------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.settings.ca_file)
        context.load_cert_chain(self.settings.cert_file, self.settings.key_file or None)
        return context

    async def _resolve(self) -> dict[str, tuple[str, str, int]]:
        """endpoint key → (name, address, port) for every address every server name resolves to."""
        found: dict[str, tuple[str, str, int]] = {}
        loop = asyncio.get_running_loop()
        for server in self.settings.servers:
            target = connect.parse_target(server)
            try:
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except OSError as exc:
                self._note(server, f"cannot resolve: {exc}")
                continue
            for info in infos:
                address = str(info[4][0])
                found[f"{address}:{target.port}" if ":" not in address else f"[{address}]:{target.port}"] = (
                    target.host,
                    address,
                    target.port,
                )
        return found

    async def _keep(self, name: str, address: str, port: int) -> None:
        """Keep one endpoint connected for as long as it is wanted (cancelled when not)."""
        endpoint = f"{address}:{port}"
        delay = self.settings.backoff_initial_s
        while True:
            connected = await self._connect_once(name, address, port, endpoint)
            if connected:
                delay = self.settings.backoff_initial_s
            wait, delay = next_delay(delay, self.settings)
            await asyncio.sleep(wait)

    async def _connect_once(self, name: str, address: str, port: int, endpoint: str) -> bool:
        s = self.settings
        uri = f"wss://{name if ':' not in name else f'[{name}]'}:{port}{config.AGENT_PATH}"
        try:
            async with ws_connect(
                uri,
                host=address,
                port=port,
                ssl=self._tls(),
                server_hostname=s.server_name or name,
                additional_headers={config.NODE_HEADER: s.node_name},
                user_agent_header="yurt-tunnel-agent",
                compression=None,
                max_size=session.MAX_MESSAGE,
                max_queue=64,
                write_limit=session.WRITE_LIMIT,
                open_timeout=10,
                ping_interval=s.keepalive_s,
                ping_timeout=s.keepalive_s,
                close_timeout=5,
            ) as ws:
                server_id = (ws.response.headers.get(config.SERVER_HEADER) if ws.response else None) or endpoint
                if server_id in self.links:
                    log.debug("already connected to this replica server=%s endpoint=%s", server_id, endpoint)
                    return False
                tunnel = session.Session(
                    ws, dials_out=True, name=server_id, on_open=self._dial, stall_s=self.settings.keepalive_s
                )
                link = Link(endpoint, server_id, tunnel)
                self.links[server_id] = link
                self.metrics.connects.labels("connected").inc()
                self._last_error.pop(endpoint, None)
                log.info("connected to tunnel server server=%s endpoint=%s", server_id, endpoint)
                try:
                    reason = await tunnel.run()
                finally:
                    self.links.pop(server_id, None)
                    self._closed_in += tunnel.bytes_in
                    self._closed_out += tunnel.bytes_out
                log.warning("lost tunnel server server=%s endpoint=%s reason=%s", server_id, endpoint, reason)
                return True
        except InvalidStatus as exc:
            response = exc.response
            body = response.body.decode(errors="replace").strip() if response.body else ""
            self.metrics.connects.labels(f"http-{response.status_code}").inc()
            self._note(
                endpoint,
                f"server answered {response.status_code}: {body}",
                error=response.status_code in (401, 403, 409),  # 409: another agent holds this node's connection
            )
        except (OSError, TimeoutError, InvalidHandshake, ssl.SSLError) as exc:
            self.metrics.connects.labels("failed").inc()
            self._note(endpoint, f"{type(exc).__name__}: {exc}")
        return False

    def _note(self, endpoint: str, message: str, *, error: bool = False) -> None:
        """Log a link's failure once per distinct message, not on every retry."""
        if self._last_error.get(endpoint) != message:
            self._last_error[endpoint] = message
            log.log(
                logging.ERROR if error else logging.WARNING,
                "cannot connect to tunnel server endpoint=%s error=%s",
                endpoint,
                message,
            )

    # --- dials from the cloud ---------------------------------------------------------------------

    async def _dial(self, stream: session.Stream) -> None:
        s = self.settings
        try:
            target = connect.parse_target(stream.target)
            host = dial_host(target, s)
            try:
                async with asyncio.timeout(s.dial_timeout_s):
                    reader, writer = await asyncio.open_connection(host, target.port)
            except TimeoutError:
                raise errors.DialFailed(504, f"{target} did not answer within {s.dial_timeout_s:g}s") from None
            except OSError as exc:
                raise errors.DialFailed(502, f"{target}: {exc.strerror or exc}") from None
        except errors.BadConnect as exc:
            self.metrics.dials.labels("bad-target").inc()
            stream.session.refuse(stream, f"400 {exc.message}")
            return
        except errors.DialFailed as exc:
            self.metrics.dials.labels("refused" if exc.status == 403 else "failed").inc()
            log.info("dial refused target=%s status=%d reason=%s", stream.target, exc.status, exc.message)
            stream.session.refuse(stream, f"{exc.status} {exc.message}")
            return
        if not stream.session.accept(stream):
            self.metrics.dials.labels("abandoned").inc()  # the server stopped waiting before we got there
            writer.close()
            return
        self.metrics.dials.labels("connected").inc()
        await session.splice(stream, reader, writer)

    # --- running ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        runner = None
        if s.serve_port >= 0:
            runner = await endpoints.start(
                endpoints.app(self.ready, self.status, self.metrics.registry), s.serve_address, s.serve_port
            )
        keepers: dict[str, asyncio.Task[None]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                while not stop.is_set():
                    wanted = await self._resolve()
                    for key, (name, address, port) in wanted.items():
                        if key not in keepers or keepers[key].done():
                            keepers[key] = group.create_task(self._keep(name, address, port), name=f"link-{key}")
                    for key in set(keepers) - set(wanted):
                        keepers.pop(key).cancel()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(s.resolve_interval_s):
                            await stop.wait()
                for task in keepers.values():
                    task.cancel()
        finally:
            if runner is not None:
                await runner.cleanup()
