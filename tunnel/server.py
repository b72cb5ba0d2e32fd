"""`yurt-tunnel-server`: accepts edge agents over websockets (mutual TLS) and serves kube-apiserver's egress
selector (HTTP CONNECT over mutual TLS or a Unix socket), carrying each CONNECT over the agent of the node the
target belongs to.

Routing (`routes`): the target host is a node name or one of a node's addresses (from Node objects); an edge
node is reached only through its agent (502 when none is connected), an address several edge nodes list
reaches none of them (502 with the reason), any other target is dialled directly when `direct_fallback` is
on (cloud kubelets, webhooks, aggregated APIs), as the apiserver itself would, except loopback, link-local,
unspecified and cloud metadata addresses (403; a name is resolved first and every address it resolves to
judged, then the judged address is dialled). Direct dials count against `max_pending_dials` like agent dials.

One live connection per node: when a second agent connection for a node arrives (a reconnect, or a leaked
certificate), the live one is pinged; if it answers, the newcomer is refused (409, logged, counted), if not,
it is dropped and the newcomer serves.

`/v1/status` (every agent with its addresses) answers loopback clients only, and with `status_on_connect`
also on the CONNECT TLS port to the clients allowed to CONNECT; `/metrics` names no node and no address.

The answer to a CONNECT is written only after the agent reached the target: 200 and nothing else, then the
apiserver's own TLS to the kubelet flows through untouched. Refusals carry a status and a one-line reason
(403 not allowed on the node, 502 no agent / refused / lost, 503 too many pending dials, 504 timeout).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from tunnel import config, connect, endpoints, errors, nodes, routes, session
from tunnel.metrics import Live, ServerMetrics

log = logging.getLogger(__name__)
HEAD_TIMEOUT_S = 10.0
TLS_READ_BUFFER = 16 * 1024
"""asyncio's own loop gives every TLS connection a read buffer of `SSLProtocol.max_size` (256 KiB), allocated and
zeroed up front: 2,000 idle agents would pin 500 MB for nothing. A read returns at most one TLS record (16 KiB), so
a buffer that size costs no throughput. The commands run the server on uvloop (tunnel.cli), whose TLS buffer is
allocated without being written, so an idle agent's pages of it are never resident; this setting then matters
only to a server run on asyncio's own loop (bench/tunnel_bench.py measures the memory per idle agent)."""


TRIM_AFTER_S = 1.0
"""How long after the last agent joined the server hands freed memory back to the system (`Trimmer`)."""


class Trimmer:
    """Hands the C heap's free pages back to the system (glibc's `malloc_trim`) once agents stop joining.

    A TLS handshake and a websocket upgrade allocate and free tens of kilobytes of scratch memory (OpenSSL's
    handshake state, certificate parsing, HTTP headers); glibc keeps those freed pages mapped, scattered between
    the long-lived objects of the agents that stay, so each idle agent cost about 20 KB more than it holds
    (bench/tunnel_bench.py, tracemalloc against /proc/<pid>/smaps). One trim after a burst of joins returns
    them; a trim walks the heap (milliseconds with thousands of agents), so it runs at most once per
    `TRIM_AFTER_S` while agents keep arriving. Idle agents dirty such pages again: every keepalive round reads
    one TLS record per agent, and OpenSSL allocates a record buffer for each read and frees it after (Python's
    ssl sets SSL_MODE_RELEASE_BUFFERS), so the keepalive asks for a trim after each round too (about 2.5 KB per
    idle agent at 2,000 agents). A no-op where the C library has no `malloc_trim` (musl)."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._handle: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        if self._trim is None or self._handle is not None:
            return
        self._handle = asyncio.get_running_loop().call_later(TRIM_AFTER_S, self._run)

    def _run(self) -> None:
        self._handle = None
        if self._trim is not None:
            self._trim(0)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def node_from_certificate(peercert: dict[str, Any] | None) -> str | None:
    """The node a verified client certificate names (CN `system:node:<name>`), or None."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and str(value).startswith(config.NODE_CN_PREFIX):
                name = str(value)[len(config.NODE_CN_PREFIX) :]
                return name or None
    return None


def common_name(peercert: dict[str, Any] | None) -> str:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _mtls_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key or None)
    return context


class AgentInfo:
    def __init__(self, node: str, remote: str, tunnel: session.Session) -> None:
        self.node = node
        self.remote = remote
        self.session = tunnel
        self.since = time.time()


class Server:
    def __init__(self, settings: config.ServerSettings) -> None:
        self.settings = settings
        self.routes: routes.Routes[AgentInfo] = routes.Routes(routes.parse_cidrs(settings.edge_cidrs))
        self.metrics = ServerMetrics(self._live)
        self._pending = 0
        self._closed_in = 0
        self._closed_out = 0
        self._direct_streams = 0
        self._listening = False
        self._watch: nodes.NodeWatch | None = None
        self._joining: dict[str, ServerConnection] = {}
        self._duplicates_logged: set[str] = set()
        self._trimmer = Trimmer()

    # --- state ------------------------------------------------------------------------------------

    def _infos(self) -> list[AgentInfo]:
        return [info for infos in self.routes.agents.values() for info in infos]

    def _live(self) -> Live:
        infos = self._infos()
        return Live(
            peers=len(infos),
            streams=sum(i.session.open_streams for i in infos) + self._direct_streams,
            bytes_in=self._closed_in + sum(i.session.bytes_in for i in infos),
            bytes_out=self._closed_out + sum(i.session.bytes_out for i in infos),
        )

    def ready(self) -> tuple[bool, str]:
        if not self._listening:
            return False, "not listening yet"
        if self._watch is not None and not self._watch.synced.is_set():
            return False, "node addresses not synced yet"
        return True, f"ok: {len(self._infos())} agent connection(s)"

    def status(self) -> dict[str, Any]:
        return {
            "server": self.settings.server_id,
            "agents": [
                {
                    "node": info.node,
                    "remote": info.remote,
                    "connectedSince": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.since)),
                    "streams": info.session.open_streams,
                    "streamsOpened": info.session.streams_opened,
                    "bytesReceived": info.session.bytes_in,
                    "bytesSent": info.session.bytes_out,
                    "queuedBytes": info.session.queued_bytes,
                    "addresses": sorted(self.routes.addresses(info.node)),
                }
                for info in sorted(self._infos(), key=lambda i: i.node)
            ],
            "pendingDials": self._pending,
        }

    # --- agents -----------------------------------------------------------------------------------

    async def _check_agent(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path != config.AGENT_PATH:
            self.metrics.agent_rejections.labels("path").inc()
            return connection.respond(404, f"agents connect to {config.AGENT_PATH}\n")
        node = node_from_certificate(connection.transport.get_extra_info("peercert"))
        if node is None:
            self.metrics.agent_rejections.labels("certificate").inc()
            log.warning("agent refused: certificate names no node remote=%s", connection.remote_address)
            return connection.respond(403, f"the client certificate must name a node ({config.NODE_CN_PREFIX}<name>)\n")
        claimed = request.headers.get(config.NODE_HEADER, node)
        if claimed != node:
            self.metrics.agent_rejections.labels("node-mismatch").inc()
            log.warning("agent refused: claims another node certificate_node=%s claimed=%s", node, claimed)
            return connection.respond(403, f"certificate names node {node!r}, agent claims {claimed!r}\n")
        return await self._check_duplicate(connection, node)

    async def _check_duplicate(self, connection: ServerConnection, node: str) -> Response | None:
        """Refuse a second connection for a node whose live one answers a ping; drop the live one if not."""
        remote = f"{connection.remote_address[0]}:{connection.remote_address[1]}"
        joining = self._joining.get(node)
        if joining is not None and joining.state in (State.CONNECTING, State.OPEN):
            return self._duplicate(connection, node, remote, "another connection for it is being set up")
        live = self.routes.sessions(node)
        if live:
            newest = live[-1]
            self._joining[node] = connection  # hold the place while the ping is out
            try:
                answered = await _answers_ping(newest.session, self.settings.duplicate_check_s)
            finally:
                if self._joining.get(node) is connection:
                    del self._joining[node]
            if answered:
                return self._duplicate(connection, node, remote, f"its connection from {newest.remote} is live")
            log.warning(
                "agent connection silent, replacing it node=%s old_remote=%s new=%s", node, newest.remote, remote
            )
            for info in live:
                info.session.ws.transport.abort()
        self._joining[node] = connection
        return None

    def _duplicate(self, connection: ServerConnection, node: str, remote: str, why: str) -> Response:
        self.metrics.agent_rejections.labels("duplicate").inc()
        if node not in self._duplicates_logged:  # once per live connection, not once per retry
            self._duplicates_logged.add(node)
            log.warning(
                "agent refused: a second connection for the node node=%s remote=%s reason=%s", node, remote, why
            )
        else:
            log.debug("agent refused again: a second connection for the node node=%s remote=%s", node, remote)
        # the newcomer is not told where the live connection comes from; the log says it
        return connection.respond(409, f"node {node} already has a live tunnel agent connection on this replica\n")

    def _stamp(self, _connection: ServerConnection, _request: Request, response: Response) -> Response:
        response.headers[config.SERVER_HEADER] = self.settings.server_id
        return response

    async def _agent(self, connection: ServerConnection) -> None:
        node = node_from_certificate(connection.transport.get_extra_info("peercert"))
        if node is None:  # _check_agent refused it already; never reached
            return
        remote = f"{connection.remote_address[0]}:{connection.remote_address[1]}"
        if self._joining.get(node) is connection:
            del self._joining[node]
        # The handshake's headers are read by now. websockets keeps the request for the connection's life (its
        # parser holds it too), a few kilobytes per idle agent: the headers go, the objects stay.
        if connection.request is not None:
            connection.request.headers.clear()
        connection.response = None
        tunnel = session.Session(
            connection,
            dials_out=False,
            name=node,
            max_streams=self.settings.max_streams_per_agent,
            max_queued_bytes=self.settings.max_queued_bytes,
            pings_per_s=self.settings.agent_pings_per_s,
            stall_s=self.settings.keepalive_s,
        )
        info = AgentInfo(node, remote, tunnel)
        self.routes.add(node, info)
        self._trimmer.soon()
        log.info("agent joined node=%s remote=%s", node, remote)
        try:
            reason = await tunnel.run()
        finally:
            self.routes.remove(node, info)
            if not self.routes.sessions(node):
                self._duplicates_logged.discard(node)
            self._closed_in += tunnel.bytes_in
            self._closed_out += tunnel.bytes_out
        if reason.startswith("protocol error"):
            self.metrics.protocol_errors.inc()
        if reason.startswith("flooding"):
            self.metrics.flood_closes.inc()
        log.info("agent left node=%s remote=%s reason=%s", node, remote, reason)

    # --- CONNECT front end ------------------------------------------------------------------------

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        code = 0  # stays 0 when the client went away before any answer
        try:
            code = await self._serve_connect(reader, writer)
        except (ConnectionError, OSError) as exc:
            log.debug("CONNECT client went away error=%s", exc)
        finally:
            if code != 200:  # a 200 is counted when it is answered: the tunnel may stay open for long
                self.metrics.connects.labels(str(code) if code else "aborted").inc()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        peercert = writer.get_extra_info("peercert")
        allowed = self.settings.connect_allowed_names
        if peercert is not None and allowed and common_name(peercert) not in allowed:
            return await _refuse(writer, 403, f"client {common_name(peercert)!r} may not CONNECT here")
        try:
            head, early = await _read_head(reader)
            if peercert is not None and self.settings.status_on_connect and head.startswith(b"GET /v1/status "):
                return await _answer_status(writer, self.status())
            target = connect.parse(head)
        except errors.BadConnect as exc:
            return await _refuse(writer, exc.status, exc.message)
        if self._pending >= self.settings.max_pending_dials:
            self.metrics.dial_failures.labels("overloaded").inc()
            return await _refuse(writer, 503, "too many dials pending; retry")
        route = self.routes.route(target.host)
        if isinstance(route, routes.Refused):
            self.metrics.dial_failures.labels("ambiguous").inc()
            log.warning("CONNECT refused target=%s reason=%s", target, route.reason)
            return await _refuse(writer, 502, f"{target}: {route.reason}")
        if isinstance(route, routes.Direct):
            if not self.settings.direct_fallback:
                self.metrics.dial_failures.labels("no-agent").inc()
                return await _refuse(writer, 502, f"{target} is not an edge node with a tunnel agent")
            return await self._direct(target, early, reader, writer)
        node, agent = route.node, route.session
        if agent is None:
            self.metrics.dial_failures.labels("no-agent").inc()
            return await _refuse(writer, 502, f"no tunnel agent connected for edge node {node}")
        self._pending += 1
        try:
            stream = await agent.session.open(str(target), within=self.settings.dial_timeout_s)
        except errors.DialFailed as exc:
            self.metrics.dial_failures.labels(_failure_reason(exc.status)).inc()
            log.info("dial failed node=%s target=%s status=%d reason=%s", node, target, exc.status, exc.message)
            return await _refuse(writer, exc.status, f"{target} via node {node}: {exc.message}")
        finally:
            self._pending -= 1
        writer.write(connect.response(200))
        self.metrics.connects.labels("200").inc()
        if early:
            await stream.write(early)
        await session.splice(stream, reader, writer)
        return 200

    async def _direct(
        self, target: connect.Target, early: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> int:
        self._pending += 1
        try:
            async with asyncio.timeout(self.settings.dial_timeout_s):
                address = await _judged_address(target)
                up_reader, up_writer = await asyncio.open_connection(address, target.port)
        except errors.DialFailed as exc:
            self.metrics.dial_failures.labels("not-allowed").inc()
            log.warning("direct dial refused target=%s reason=%s", target, exc.message)
            return await _refuse(writer, exc.status, exc.message)
        except (OSError, TimeoutError) as exc:
            self.metrics.dial_failures.labels("direct").inc()
            status = 504 if isinstance(exc, TimeoutError) else 502
            return await _refuse(writer, status, f"direct dial to {target} failed: {exc or 'timed out'}")
        finally:
            self._pending -= 1
        writer.write(connect.response(200))
        self.metrics.connects.labels("200").inc()
        up_writer.write(early)
        self._direct_streams += 1
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._direct_streams -= 1
            up_writer.close()
        return 200

    # --- running ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
        s = self.settings
        access = nodes.load_access(s.kubeconfig)
        async with asyncio.TaskGroup() as group:
            watch: asyncio.Task[None] | None = None
            if access is not None:
                self._watch = nodes.NodeWatch(access, s.edge_label, self._nodes_listed, self._node_changed)
                watch = group.create_task(self._watch.run(), name="node-watch")
            else:
                log.warning("no Kubernetes API access: targets are routed by node name only")
            agent_tls = _mtls_context(s.agent_cert, s.agent_key, s.agent_ca)
            agent_tls.num_tickets = 0
            agents = await serve(
                self._agent,
                s.agent_address,
                s.agent_port,
                ssl=agent_tls,
                process_request=self._check_agent,
                process_response=self._stamp,
                compression=None,
                max_size=session.MAX_MESSAGE,
                max_queue=64,
                write_limit=session.WRITE_LIMIT,
                ping_interval=None,  # one keepalive task for every agent (`_keepalive`), not one per connection
                server_header=None,
            )
            keepalive = group.create_task(self._keepalive(), name="agent-keepalive")
            fronts: list[asyncio.Server] = []
            if s.connect_port:
                tls = _mtls_context(s.connect_cert, s.connect_key, s.connect_ca)
                fronts.append(await asyncio.start_server(self._connect, s.connect_address, s.connect_port, ssl=tls))
            if s.connect_uds:
                await asyncio.to_thread(Path(s.connect_uds).unlink, missing_ok=True)
                old = os.umask(0o177)
                try:
                    fronts.append(await asyncio.start_unix_server(self._connect, s.connect_uds))
                finally:
                    os.umask(old)
            runner = await endpoints.start(
                endpoints.app(self.ready, self.status, self.metrics.registry, status_loopback_only=True),
                s.serve_address,
                s.serve_port,
            )
            self._listening = True
            log.info(
                "tunnel server listening id=%s agents=%s:%d connect=%s uds=%s",
                s.server_id,
                s.agent_address,
                s.agent_port,
                f"{s.connect_address}:{s.connect_port}" if s.connect_port else "off",
                s.connect_uds or "off",
            )
            try:
                await stop.wait()
            finally:
                self._listening = False
                self._trimmer.cancel()
                keepalive.cancel()
                agents.close()
                for front in fronts:
                    front.close()
                await runner.cleanup()
                if watch is not None:
                    watch.cancel()

    async def _keepalive(self) -> None:
        """Every `keepalive_s`, a tunnel PING to each agent; an agent not heard from for one and a half
        intervals (so: within two) is dropped, and its node gets 502s at once instead of dials nobody answers.

        One task for all agents: websockets' own keepalive is a task per connection (a task, its coroutine and
        its timer: about 2 KB per idle agent, bench/tunnel_bench.py). The PING goes to the agent's tunnel
        session, so an agent whose websocket library still answers pings while its tunnel code is stuck is
        found too."""
        interval = self.settings.keepalive_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for info in self._infos():
                tunnel = info.session
                if now - tunnel.last_heard > 1.5 * interval:
                    log.warning(
                        "agent silent, dropping it node=%s remote=%s silent_s=%.1f",
                        info.node,
                        info.remote,
                        now - tunnel.last_heard,
                    )
                    tunnel.ws.transport.abort()
                else:
                    tunnel.ping()
            self._trimmer.soon()

    def _nodes_listed(self, listed: dict[str, nodes.Node]) -> None:
        self.routes.replace_nodes({name: (n.addresses, n.edge, n.pod_cidrs) for name, n in listed.items()})

    def _node_changed(self, name: str, node: nodes.Node | None) -> None:
        if node is None:
            self.routes.forget_node(name)
        else:
            self.routes.set_addresses(name, node.addresses, edge=node.edge, pod_cidrs=node.pod_cidrs)


async def _answers_ping(tunnel: session.Session, within: float) -> bool:
    """The websocket of `tunnel` answers a ping within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            pong = await tunnel.ws.ping()
            await pong
    except (ConnectionClosed, TimeoutError, RuntimeError):
        return False
    return True


async def _judged_address(target: connect.Target) -> str:
    """The address to dial for a direct target: a name is resolved and every address it resolves to must be
    allowed (a name with one loopback address among others is refused); `DialFailed(403)` otherwise."""
    why = routes.special_address(target.host)
    if why is not None:
        raise errors.DialFailed(403, f"{target} is {why}: never dialled")
    infos = await asyncio.get_running_loop().getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        why = routes.special_address(address)
        if why is not None:
            raise errors.DialFailed(403, f"{target} resolves to {address}, {why}: never dialled")
    if not addresses:
        raise OSError(f"{target.host} resolves to no address")
    return addresses[0]


async def _answer_status(writer: asyncio.StreamWriter, report: dict[str, Any]) -> int:
    body = (json.dumps(report, indent=2) + "\n").encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
    return 200


def _failure_reason(status: int) -> str:
    return {403: "not-allowed", 504: "timeout"}.get(status, "refused")


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(request head, bytes the client sent after it) — bounded in size and time."""
    buffer = b""
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_S):
            while not (end := connect.head_complete(buffer)):
                if len(buffer) > connect.MAX_HEAD:
                    raise errors.BadConnect(431, f"request head longer than {connect.MAX_HEAD} bytes")
                chunk = await reader.read(4096)
                if not chunk:
                    raise errors.BadConnect(400, "connection closed before the request head ended")
                buffer += chunk
    except TimeoutError:
        raise errors.BadConnect(408, f"no complete request head within {HEAD_TIMEOUT_S:g}s") from None
    return buffer[:end], buffer[end:]


async def _refuse(writer: asyncio.StreamWriter, status: int, message: str) -> int:
    writer.write(connect.response(status, message))
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
    return status


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
