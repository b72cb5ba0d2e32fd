"""The tunnel against the direct TCP path on loopback, measured in the same run.

The server and one agent run from their console scripts (agent link: websocket over mutual TLS, as
deployed); CONNECTs come in over the server's Unix socket so what is measured is the tunnel, not the
client's TLS to the front end (which the apiserver pays for any proxy). The targets are loopback TCP
servers in this process: a source that writes as fast as it can and an echo.

For the scale figures, 2,000 agents run in this process (the agent's own code, one TLS websocket each,
as 2,000 kwok-scale nodes would hold), and the server's resident memory is read from /proc.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import socketserver
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from testenv import pki, tunnelhost
from testenv.kubectl import wait_for
from tunnel import agent, config

NODE = "bench-node"
THROUGHPUT_BYTES = 256 * 1024 * 1024
ECHOES = 2000
FAIR_STREAMS = 50
FAIR_BYTES = 8 * 1024 * 1024
AGENTS = 2000
CHUNK = b"\0" * (256 * 1024)


class _Source(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while True:
                self.request.sendall(CHUNK)
        except OSError:
            return


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _tunnel_socket(server: tunnelhost.Server, target: str) -> socket.socket:
    assert server.uds is not None
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(server.uds))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"CONNECT {target} answered {head!r}")
    return sock


def _drain(sock: socket.socket, count: int) -> float:
    """Seconds to read `count` bytes."""
    start = time.perf_counter()
    got = 0
    buffer = bytearray(1 << 20)
    while got < count:
        n = sock.recv_into(buffer)
        if not n:
            raise RuntimeError("stream ended early")
        got += n
    return time.perf_counter() - start


def throughput(server: tunnelhost.Server, source_port: int) -> dict[str, float]:
    direct = socket.create_connection(("127.0.0.1", source_port))
    direct_s = _drain(direct, THROUGHPUT_BYTES)
    direct.close()
    tunnelled = _tunnel_socket(server, f"{NODE}:{source_port}")
    tunnel_s = _drain(tunnelled, THROUGHPUT_BYTES)
    tunnelled.close()
    mb = THROUGHPUT_BYTES / 1e6
    return {
        "direct_throughput_mb_s": round(mb / direct_s, 1),
        "stream_throughput_mb_s": round(mb / tunnel_s, 1),
        "throughput_ratio_to_direct": round(direct_s / tunnel_s, 3),
    }


def _echo_p50_ms(sock: socket.socket) -> float:
    samples = []
    for _ in range(ECHOES):
        start = time.perf_counter()
        sock.sendall(b"x")
        if sock.recv(1) != b"x":
            raise RuntimeError("echo lost its byte")
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def latency(server: tunnelhost.Server, echo_port: int) -> dict[str, float]:
    direct = socket.create_connection(("127.0.0.1", echo_port))
    direct.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tunnelled = _tunnel_socket(server, f"{NODE}:{echo_port}")
    direct_ms, tunnel_ms = _echo_p50_ms(direct), _echo_p50_ms(tunnelled)
    direct.close()
    tunnelled.close()
    return {
        "direct_echo_p50_ms": round(direct_ms, 3),
        "tunnel_echo_p50_ms": round(tunnel_ms, 3),
        "added_latency_p50_ms": round(tunnel_ms - direct_ms, 3),
    }


def _many_streams_mb_s(server: tunnelhost.Server, source_port: int) -> float:
    socks = [_tunnel_socket(server, f"{NODE}:{source_port}") for _ in range(FAIR_STREAMS)]
    start = time.perf_counter()
    threads = [threading.Thread(target=_drain, args=(s, FAIR_BYTES)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for s in socks:
        s.close()
    return FAIR_STREAMS * FAIR_BYTES / 1e6 / elapsed


def fairness(server: tunnelhost.Server, source_port: int) -> dict[str, float]:
    free = _many_streams_mb_s(server, source_port)
    stalled = _tunnel_socket(server, f"{NODE}:{source_port}")
    stalled.recv(1)  # flowing; from now on nobody reads it
    time.sleep(1)
    with_stall = _many_streams_mb_s(server, source_port)
    stalled.close()
    return {
        "fifty_streams_mb_s": round(free, 1),
        "fifty_streams_with_one_stalled_mb_s": round(with_stall, 1),
        "fairness_ratio": round(with_stall / free, 3),
    }


async def _agents_scale(
    certs: tunnelhost.Certs, ca: pki.CertificateAuthority, directory: Path, server: tunnelhost.Server
) -> dict[str, float]:
    agents = []
    for i in range(AGENTS):
        cert = tunnelhost.node_cert(ca, directory, f"sim-{i:04d}")
        agents.append(
            agent.Agent(
                config.AgentSettings(
                    node_name=f"sim-{i:04d}",
                    servers=(f"127.0.0.1:{server.agent_port}",),
                    ca_file=str(certs.ca),
                    cert_file=str(cert),
                    serve_port=-1,
                    keepalive_s=30,
                )
            )
        )
    assert server.proc is not None
    before = _rss_kib(server.proc.pid)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        for a in agents:
            group.create_task(a.run(stop))
        await _until(lambda: sum(len(a.links) for a in agents) == AGENTS, 300)
        await _until(lambda: len(server.status()["agents"]) == AGENTS + 1, 60)
        await asyncio.sleep(5)
        after = _rss_kib(server.proc.pid)
        server.kill()
        await _until(lambda: sum(len(a.links) for a in agents) == 0, 60)
        start = time.perf_counter()
        server.start()
        await _until(lambda: sum(len(a.links) for a in agents) == AGENTS, 300)
        storm_s = time.perf_counter() - start
        stop.set()
    return {
        "agents": AGENTS,
        "server_rss_mib_before_agents": round(before / 1024, 1),
        "server_rss_mib_with_agents": round(after / 1024, 1),
        "idle_agent_kb": round((after - before) / AGENTS, 1),
        "reconnect_storm_s": round(storm_s, 2),
    }


async def _until(check: Any, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.2)


def run() -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2,000 agents hold 2,000 sockets a side
    source, echo = tunnelhost.target(_Source), tunnelhost.target(_Echo)
    ports = (source.server_address[1], echo.server_address[1])
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca = pki.CertificateAuthority("bench-tunnel-ca")
        certs = tunnelhost.issue(ca, directory / "pki")
        server = tunnelhost.server(certs, directory, "bench-0", extra=("--no-direct-fallback",))
        one = tunnelhost.agent(
            certs,
            tunnelhost.node_cert(ca, directory, NODE),
            directory,
            NODE,
            [f"127.0.0.1:{server.agent_port}"],
            allowed_ports=ports,
        )
        try:
            wait_for("the agent", lambda: len(server.status()["agents"]) == 1, timeout=20)
            metrics |= throughput(server, ports[0])
            metrics |= latency(server, ports[1])
            metrics |= fairness(server, ports[0])
            (directory / "agents").mkdir()
            metrics |= asyncio.run(_agents_scale(certs, ca, directory / "agents", server))
        finally:
            one.stop()
            server.stop()
            source.shutdown()
            echo.shutdown()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    metrics["targets"] = {
        "stream_throughput_mb_s": ">= 200",
        "added_latency_p50_ms": "<= 0.5",
        "fairness_ratio": ">= 0.9",
        "idle_agent_kb": "<= 50",
        "reconnect_storm_s": "<= 30",
    }
    return {"metrics": metrics, "median": {k: v for k, v in metrics.items() if k != "targets"}}
