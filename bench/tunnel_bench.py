"""The tunnel against konnectivity (its Go anchor) and the direct TCP path on loopback, in the same run.

Both tunnels are driven the way kube-apiserver's egress selector drives them in HTTPConnect mode over a Unix
socket: our server's `--connect-uds`, konnectivity's `proxy-server --mode=http-connect --uds-name`. Both
agents reach their server over mutual TLS with certificates from the same test CA (testenv.pki). The client
(this process) and the targets (loopback TCP servers in this process: a source that writes as fast as it
can and an echo) are the same for both; only the CONNECT target differs, because konnectivity's agent dials
the address it is given while ours routes by node name.

Every figure is measured for both tunnels in each repetition, interleaved (the order alternates between
repetitions), on freshly started servers and agents; the JSON keeps each system's median, min, max and the
single runs, and the ratio ours/konnectivity of the medians.

Figures:
- one stream: seconds to read 256 MiB through one CONNECT;
- echo: 1-byte round trips, `ECHOES` samples per repetition: the p50 minus the direct path's p50 (the added
  latency), and the p99 of the round trip itself (2,000 samples: the 20 slowest decide it; the direct path's own
  p99 is not subtracted, as tail noise of two runs does not cancel);
- 50 streams: aggregate MB/s of 50 concurrent CONNECTs each reading 8 MiB (dials included), the mean of
  `FAIR_FREE_RUNS` such runs per repetition (two gave single repetitions from 70 to 242 MB/s for ours);
- fairness: the same with one more stream of the same agent whose reader has stopped reading, over the mean of
  the free runs (ours: half before and half after it, so drift of the shared machine cancels; konnectivity:
  all before, as its agent may stay blocked after); streams that get nothing within `FAIR_DEADLINE_S` count
  zero bytes (konnectivity's agent blocks every stream behind the stalled one);
- memory: a fresh server's resident memory growth per idle agent (VmRSS from /proc), with `IDLE_AGENTS`
  agents. Ours run as the agent's own code inside this process (one TLS websocket each); konnectivity's
  are `proxy-agent` processes (one gRPC stream over TLS each), so 2,000 of them (about 2,000 times one
  agent's resident memory) are only started when the machine has the memory for them. When it has not, both
  are also measured at the largest count whose `proxy-agent` processes fit in `KONNECTIVITY_MEMORY_SHARE` of the
  memory available (`idle_agent_kb_largest_both`, with the count and the reason in the JSON): the ratio
  target is judged there, where both ran.

`python -m bench.tunnel_bench` runs a subset for one's own measurements (`--figures`, `--repetitions`,
`--idle-agents`) and prints the JSON instead of writing bench/results; `make bench` runs everything.

Each CONNECT's answer is also checked for bytes of the target arriving before `200`: they are counted per
system (`bytes_before_200`), since kube-apiserver fails such a dial.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import socket
import socketserver
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from bench import machine
from testenv import pki, tunnelhost
from testenv.kubectl import wait_for
from tunnel import agent, config

NODE = "bench-node"
REPETITIONS = int(os.environ.get("YURT_BENCH_REPETITIONS", "3"))
THROUGHPUT_BYTES = 256 * 1024 * 1024
ECHOES = 2000
FAIR_STREAMS = 50
FAIR_BYTES = 8 * 1024 * 1024
FAIR_DEADLINE_S = 20.0
FAIR_FREE_RUNS = 4
IDLE_AGENTS: tuple[int, ...] = (200, 2000)
KONNECTIVITY_MEMORY_SHARE = 0.45
"""Share of the machine's available memory konnectivity's idle agents may take (others share the machine)."""
SETTLE_S = 5.0
CHUNK = b"\0" * (256 * 1024)
KONNECTIVITY = "konnectivity"
OURS = "yurt-edge"
ROOT = Path(__file__).resolve().parent.parent


class _Source(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while True:
                self.request.sendall(CHUNK)
        except OSError:
            return


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


class _Ports:
    """Loopback ports below the ephemeral range (konnectivity refuses ports above 49151), each checked free."""

    def __init__(self) -> None:
        self._next = 20000 + os.getpid() % 6000  # two runs at once start apart

    def take(self) -> int:
        for _ in range(10000):
            port, self._next = self._next, self._next + 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError("no free loopback port below the ephemeral range")


@dataclasses.dataclass
class Dialed:
    sock: socket.socket
    leftover: bytes
    """Target bytes that came in the same reads as the response head."""


class ServerExited(RuntimeError):
    """A server of the run went away while being measured (on a shared machine, something else may signal it)."""


class Tunnel(Protocol):
    name: str
    early: int
    """CONNECTs whose target bytes arrived before the `200` line."""

    def target(self, port: int) -> str: ...

    def uds(self) -> Path: ...

    def server_pid(self) -> int: ...


def dial(tunnel: Tunnel, port: int, timeout: float = 20.0) -> Dialed:
    """CONNECT over the tunnel's Unix socket as kube-apiserver does; the socket once `200` has been read."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout)
    try:
        sock.connect(str(tunnel.uds()))
        sock.sendall(f"CONNECT {tunnel.target(port)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        buffer = b""
        while (start := buffer.find(b"HTTP/1.")) < 0 or b"\r\n\r\n" not in buffer[start:]:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"{tunnel.name} closed the CONNECT before answering: {buffer[:200]!r}")
            buffer += chunk
        if start:
            tunnel.early += 1
        head, _, rest = buffer[start:].partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"{tunnel.name} answered the CONNECT with {head[:200]!r}")
        return Dialed(sock, buffer[:start] + rest)
    except BaseException:
        sock.close()
        raise


def _drain(dialed: Dialed, count: int, deadline: float) -> int:
    """Read up to `count` bytes before `deadline` (perf_counter); the number read."""
    got = len(dialed.leftover)
    buffer = bytearray(1 << 20)
    while got < count:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        dialed.sock.settimeout(left)
        try:
            n = dialed.sock.recv_into(buffer)
        except TimeoutError:
            break
        if not n:
            raise RuntimeError("stream ended early")
        got += n
    return min(got, count)


# --- the two tunnels ----------------------------------------------------------------------------------


class Ours:
    name = OURS

    def __init__(self, ca: pki.CertificateAuthority, certs: tunnelhost.Certs, directory: Path) -> None:
        self.ca, self.certs, self.directory = ca, certs, directory
        self.early = 0
        self._server: tunnelhost.Server | None = None
        self._agent: tunnelhost.Running | None = None
        self._count = 0

    def target(self, port: int) -> str:
        return f"{NODE}:{port}"

    def uds(self) -> Path:
        assert self._server is not None and self._server.uds is not None
        return self._server.uds

    def server_pid(self) -> int:
        assert self._server is not None and self._server.proc is not None
        return self._server.proc.pid

    def start_server(self) -> tunnelhost.Server:
        self._count += 1
        self._server = tunnelhost.server(
            self.certs, self.directory / f"run-{self._count}", "bench-0", extra=("--no-direct-fallback",)
        )
        return self._server

    def start(self, ports: tuple[int, ...]) -> None:
        server = self.start_server()
        self._agent = tunnelhost.agent(
            self.certs,
            tunnelhost.node_cert(self.ca, self.directory, NODE),
            self.directory / f"run-{self._count}",
            NODE,
            [f"127.0.0.1:{server.agent_port}"],
            allowed_ports=ports,
        )
        wait_for("our agent", lambda: len(server.status()["agents"]) == 1, timeout=30)

    def stop(self) -> None:
        if self._agent is not None:
            self._agent.stop()
        if self._server is not None:
            self._server.stop()
        self._agent = self._server = None

    def idle_agents(self, count: int) -> dict[str, float]:
        """A fresh server's memory growth with `count` idle agents (and, at the largest count, how long all of
        them take to come back after the server is killed and restarted)."""
        server = self.start_server()
        try:
            return asyncio.run(self._idle_agents(server, count))
        finally:
            self.stop()

    async def _idle_agents(self, server: tunnelhost.Server, count: int) -> dict[str, float]:
        agents = [
            agent.Agent(
                config.AgentSettings(
                    node_name=f"sim-{i:04d}",
                    servers=(f"127.0.0.1:{server.agent_port}",),
                    ca_file=str(self.certs.ca),
                    cert_file=str(self._node_cert(f"sim-{i:04d}")),
                    serve_port=-1,
                    keepalive_s=30,
                )
            )
            for i in range(count)
        ]
        assert server.proc is not None
        await asyncio.sleep(SETTLE_S)
        before = _rss_kib(server.proc.pid)
        stop = asyncio.Event()
        result: dict[str, float] = {}
        async with asyncio.TaskGroup() as group:
            for a in agents:
                group.create_task(a.run(stop))
            await _until(lambda: sum(len(a.links) for a in agents) == count, 300)
            await _until(lambda: len(server.status()["agents"]) == count, 60)
            await asyncio.sleep(SETTLE_S)
            after = _rss_kib(server.proc.pid)
            result["idle_agent_kb"] = (after - before) * 1.024 / count
            result["server_rss_mib_before"] = before / 1024
            result["server_rss_mib_after"] = after / 1024
            if count == max(IDLE_AGENTS):
                server.kill()
                await _until(lambda: sum(len(a.links) for a in agents) == 0, 60)
                start = time.perf_counter()
                server.start()
                await _until(lambda: sum(len(a.links) for a in agents) == count, 300)
                result["reconnect_storm_s"] = time.perf_counter() - start
            stop.set()
        return result

    def _node_cert(self, node: str) -> Path:
        path = self.directory / f"node-{node}.pem"
        return path if path.exists() else tunnelhost.node_cert(self.ca, self.directory, node)


class Konnectivity:
    name = KONNECTIVITY

    def __init__(self, bin_dir: Path, ca: pki.CertificateAuthority, certs: tunnelhost.Certs, directory: Path) -> None:
        self.certs, self.directory = certs, directory
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        # Run them from this run's directory, not the cache: a test cluster starting meanwhile (another worktree's)
        # clears every process running a binary from the cache as a leftover of a crashed run.
        for name in ("proxy-server", "proxy-agent"):
            try:
                os.link(bin_dir / name, self.bin / name)
            except OSError:
                shutil.copy2(bin_dir / name, self.bin / name)
        self.agent_cert, self.agent_key = ca.issue("konnectivity-agent", client=True).write(directory, "agent")
        self.early = 0
        self.ports = _Ports()
        self._server: subprocess.Popen[bytes] | None = None
        self._agents: list[subprocess.Popen[bytes]] = []
        self._count = 0
        self._uds = directory / "konnectivity.sock"
        self.agent_port = self.admin_port = self.health_port = 0

    def target(self, port: int) -> str:
        return f"127.0.0.1:{port}"

    def uds(self) -> Path:
        return self._uds

    def server_pid(self) -> int:
        assert self._server is not None
        return self._server.pid

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.directory / log).open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start_server(self) -> None:
        self._count += 1
        self.agent_port, self.admin_port, self.health_port = (self.ports.take() for _ in range(3))
        self._server = self._spawn(
            [
                str(self.bin / "proxy-server"),
                "--mode=http-connect",
                f"--uds-name={self._uds}",
                "--delete-existing-uds-file=true",
                "--server-port=0",
                f"--cluster-cert={self.certs.server_cert}",
                f"--cluster-key={self.certs.server_key}",
                f"--cluster-ca-cert={self.certs.ca}",
                "--agent-bind-address=127.0.0.1",
                f"--agent-port={self.agent_port}",
                "--admin-bind-address=127.0.0.1",
                f"--admin-port={self.admin_port}",
                "--health-bind-address=127.0.0.1",
                f"--health-port={self.health_port}",
                "--server-count=1",
                "--server-id=bench-0",
            ],
            f"server-{self._count}.log",
        )
        wait_for("konnectivity's server", lambda: self._get(self.health_port, "/healthz")[0] == 200, timeout=30)

    def start_agents(self, count: int) -> None:
        for _ in range(count):
            i = len(self._agents)
            self._agents.append(
                self._spawn(
                    [
                        str(self.bin / "proxy-agent"),
                        "--proxy-server-host=127.0.0.1",
                        f"--proxy-server-port={self.agent_port}",
                        f"--ca-cert={self.certs.ca}",
                        f"--agent-cert={self.agent_cert}",
                        f"--agent-key={self.agent_key}",
                        f"--agent-id=agent-{i:04d}",
                        "--admin-bind-address=127.0.0.1",
                        f"--admin-server-port={self.ports.take()}",
                        "--health-server-host=127.0.0.1",
                        f"--health-server-port={self.ports.take()}",
                    ],
                    f"agents-{self._count}.log",
                )
            )

        def connected() -> bool:
            self._server_alive()
            return self.backends() == len(self._agents)

        wait_for("konnectivity's agents", connected, timeout=120 + count, interval=0.5)

    def backends(self) -> int:
        """Agents the server holds a ready connection from (its own metric)."""
        status, body = self._get(self.admin_port, "/metrics")
        if status != 200:
            return -1
        for line in body.decode().splitlines():
            if line.startswith("konnectivity_network_proxy_server_ready_backend_connections"):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    @staticmethod
    def _get(port: int, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def start(self, ports: tuple[int, ...]) -> None:
        del ports  # konnectivity's agent dials whatever it is asked to
        self.start_server()
        self.start_agents(1)

    def agent_rss_mib(self) -> float:
        return statistics.median(_rss_kib(p.pid) for p in self._agents) / 1024

    def stop(self) -> None:
        """Stop every process at once: an agent whose server is gone may take its time over SIGTERM."""
        procs = [*self._agents, *([self._server] if self._server else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._agents, self._server = [], None

    def _server_alive(self) -> None:
        if self._server is not None and self._server.poll() is not None:
            log = (self.directory / f"server-{self._count}.log").read_text(errors="replace")
            raise ServerExited(f"konnectivity's server exited ({self._server.returncode}): {log[-1500:]}")

    def idle_agents(self, count: int) -> dict[str, float]:
        self.start_server()
        try:
            time.sleep(SETTLE_S)
            before = _rss_kib(self.server_pid())
            self.start_agents(count)
            time.sleep(SETTLE_S)
            self._server_alive()
            after = _rss_kib(self.server_pid())
            return {
                "idle_agent_kb": (after - before) * 1.024 / count,
                "server_rss_mib_before": before / 1024,
                "server_rss_mib_after": after / 1024,
                "agent_process_rss_mib": self.agent_rss_mib(),
            }
        finally:
            self.stop()


async def _until(check: Callable[[], bool], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.2)


# --- the figures ----------------------------------------------------------------------------------------


def one_stream_mb_s(tunnel: Tunnel | None, source_port: int) -> float:
    """MB/s reading `THROUGHPUT_BYTES` through one CONNECT (`None`: the direct path)."""
    if tunnel is None:
        dialed = Dialed(socket.create_connection(("127.0.0.1", source_port)), b"")
    else:
        dialed = dial(tunnel, source_port)
    with dialed.sock:
        start = time.perf_counter()
        got = _drain(dialed, THROUGHPUT_BYTES, start + 120)
        elapsed = time.perf_counter() - start
    return got / 1e6 / elapsed


def echo_ms(tunnel: Tunnel | None, echo_port: int) -> list[float]:
    """`ECHOES` 1-byte round trips, in ms (`None`: the direct path)."""
    if tunnel is None:
        sock = socket.create_connection(("127.0.0.1", echo_port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = dial(tunnel, echo_port).sock
    samples = []
    with sock:
        sock.settimeout(10)
        for _ in range(ECHOES):
            start = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("echo lost its byte")
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def many_streams_mb_s(tunnel: Tunnel, source_port: int) -> float:
    """Aggregate MB/s of `FAIR_STREAMS` CONNECTs each reading `FAIR_BYTES`, dials included; a stream that
    gets nothing by `FAIR_DEADLINE_S` counts what it got."""
    got = [0] * FAIR_STREAMS
    start = time.perf_counter()
    deadline = start + FAIR_DEADLINE_S

    def one(i: int) -> None:
        try:
            dialed = dial(tunnel, source_port, timeout=FAIR_DEADLINE_S)
        except (OSError, ConnectionError):
            return
        with dialed.sock:
            got[i] = _drain(dialed, FAIR_BYTES, deadline)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(FAIR_STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = min(time.perf_counter(), deadline) - start
    return sum(got) / 1e6 / elapsed


def with_one_stalled_mb_s(tunnel: Tunnel, source_port: int) -> float:
    """`many_streams_mb_s` while one more stream of the same agent has a reader that stopped reading."""
    stalled = dial(tunnel, source_port)
    with stalled.sock:
        if not stalled.leftover:
            stalled.sock.recv(1)  # flowing; from now on nobody reads it
        time.sleep(1)
        return many_streams_mb_s(tunnel, source_port)


# --- the run --------------------------------------------------------------------------------------------


def _spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def anchor_bin() -> Path:
    """konnectivity's binaries, built (or found in the cache) by hack/build-anchors.sh."""
    out = subprocess.run(
        [str(ROOT / "hack" / "build-anchors.sh"), "konnectivity"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _targets() -> Iterator[tuple[int, int]]:
    source, echo = tunnelhost.target(_Source), tunnelhost.target(_Echo)
    try:
        yield source.server_address[1], echo.server_address[1]
    finally:
        for s in (source, echo):
            s.shutdown()
            s.server_close()


Keep = Callable[..., None]


def _stream_figures(
    order: list[Ours | Konnectivity], ports: tuple[int, int], keep: Keep, raw: dict[str, dict[str, list[float]]]
) -> None:
    """One repetition of every stream figure, each taken for both tunnels back to back in `order`."""
    keep("direct", "one_stream_mb_s", one_stream_mb_s(None, ports[0]))
    for tunnel in order:
        keep(tunnel.name, "one_stream_mb_s", one_stream_mb_s(tunnel, ports[0]))
    direct = echo_ms(None, ports[1])
    keep("direct", "echo_p50_ms", statistics.median(direct))
    keep("direct", "echo_p99_ms", _p(direct, 0.99))
    for tunnel in order:
        samples = echo_ms(tunnel, ports[1])
        keep(tunnel.name, "echo_added_p50_ms", statistics.median(samples) - statistics.median(direct))
        keep(tunnel.name, "echo_p99_ms", _p(samples, 0.99))
    for tunnel in order:
        # free runs on both sides of ours' stalled one, so the machine's drift between them cancels;
        # konnectivity's all come before its stalled run, after which its agent may stay blocked
        before = FAIR_FREE_RUNS if tunnel.name == KONNECTIVITY else FAIR_FREE_RUNS // 2
        free = [many_streams_mb_s(tunnel, ports[0]) for _ in range(before)]
        stalled = with_one_stalled_mb_s(tunnel, ports[0])
        free += [many_streams_mb_s(tunnel, ports[0]) for _ in range(FAIR_FREE_RUNS - before)]
        keep(tunnel.name, "fifty_streams_mb_s", statistics.mean(free))
        keep(tunnel.name, "fifty_streams_one_stalled_mb_s", stalled)
        keep(tunnel.name, "fairness", stalled / statistics.mean(free))


class _Figures:
    """What one run collects: every system's values per figure, the details, and what was skipped or redone."""

    def __init__(self) -> None:
        self.raw: dict[str, dict[str, list[float]]] = {OURS: {}, KONNECTIVITY: {}, "direct": {}}
        self.extra: dict[str, dict[str, list[float]]] = {OURS: {}, KONNECTIVITY: {}}
        self.skipped: dict[str, str] = {}
        self.retried: list[str] = []
        self.largest_both = 0
        """Idle agents both tunnels were measured with when 2,000 konnectivity agents do not fit (0: they fit)."""

    def keep(self, system: str, figure: str, value: float, *, detail: bool = False) -> None:
        (self.extra if detail else self.raw)[system].setdefault(figure, []).append(value)

    def idle(self, tunnel: Ours | Konnectivity, count: int, figure: str, rep: int) -> None:
        try:
            result = tunnel.idle_agents(count)
        except ServerExited as exc:  # once: measure again on a fresh server, and say so
            self.retried.append(f"{tunnel.name} idle agents {count}, repetition {rep + 1}: {exc}"[:400])
            result = tunnel.idle_agents(count)
        self.keep(tunnel.name, figure, result.pop("idle_agent_kb"))
        suffix = figure.removeprefix("idle_agent_kb_")
        for key, value in result.items():
            self.keep(tunnel.name, f"{key}_{suffix}", value, detail=True)

    def konnectivity_fits(self, count: int) -> bool:
        """`count` proxy-agent processes fit in `KONNECTIVITY_MEMORY_SHARE` of the available memory; when not,
        the largest count that does (in hundreds) becomes `largest_both` and the reason is recorded."""
        per_agent = max(self.extra[KONNECTIVITY].get(f"agent_process_rss_mib_{min(IDLE_AGENTS)}", [0.0]))
        budget_mib = KONNECTIVITY_MEMORY_SHARE * _mem_available_kib() / 1024
        if count * per_agent <= budget_mib:
            return True
        if self.largest_both == 0:
            self.largest_both = max(min(IDLE_AGENTS), int(budget_mib / per_agent) // 100 * 100)
        self.skipped[f"idle_agent_kb_{count}"] = (
            f"{count} proxy-agent processes need about {count * per_agent:.0f} MiB (measured per agent at"
            f" {min(IDLE_AGENTS)}), more than {KONNECTIVITY_MEMORY_SHARE:.0%} of the memory available; both are"
            f" measured at {self.largest_both} agents instead"
        )
        return False

    def idle_figures(self, order: list[Ours | Konnectivity], rep: int) -> None:
        for count in IDLE_AGENTS:
            for tunnel in order:
                if tunnel.name == KONNECTIVITY and count > min(IDLE_AGENTS) and not self.konnectivity_fits(count):
                    continue
                self.idle(tunnel, count, f"idle_agent_kb_{count}", rep)
        if self.largest_both > min(IDLE_AGENTS):
            for tunnel in order:
                self.idle(tunnel, self.largest_both, "idle_agent_kb_largest_both", rep)


def run(figures: tuple[str, ...] = ("streams", "idle")) -> dict[str, object]:
    """Every figure (`make bench`); `figures` picks the stream figures, the idle-agent ones or both."""
    bin_dir = anchor_bin()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2,000 agents hold 2,000 sockets a side
    got = _Figures()

    def keep(system: str, figure: str, value: float) -> None:
        got.keep(system, figure, value)

    load_before = os.getloadavg()
    commit = machine.commit()  # what is measured: the code as the run starts
    try:
        with tempfile.TemporaryDirectory() as tmp, _targets() as ports:
            directory = Path(tmp)
            ca = pki.CertificateAuthority("bench-tunnel-ca")
            certs = tunnelhost.issue(ca, directory / "pki")
            ours = Ours(ca, certs, directory / "ours")
            theirs = Konnectivity(bin_dir, ca, certs, directory / "konnectivity")
            for rep in range(REPETITIONS):
                order: list[Ours | Konnectivity] = [ours, theirs] if rep % 2 == 0 else [theirs, ours]
                if "streams" in figures:
                    for tunnel in order:
                        tunnel.start(ports)
                    try:
                        _stream_figures(order, ports, keep, got.raw)
                    finally:
                        for tunnel in order:
                            tunnel.stop()
                if "idle" in figures:
                    got.idle_figures(order, rep)
            early = {OURS: ours.early, KONNECTIVITY: theirs.early}
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    report = _report(got.raw, got.extra, early, got.skipped)
    if got.largest_both:
        reported: Any = report["figures"]
        name = (
            "idle_agent_kb_largest_both" if got.largest_both > min(IDLE_AGENTS) else f"idle_agent_kb_{min(IDLE_AGENTS)}"
        )
        reported[name]["agents_both_ran"] = got.largest_both
    report["remeasured_after_a_server_exited"] = got.retried
    report["load_average_1m"] = {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)}
    report["commit"] = commit
    return report


TARGETS: dict[str, tuple[str, float]] = {
    "one_stream_mb_s": (">=", 1.5),
    "fifty_streams_mb_s": (">=", 1.5),
    "echo_added_p50_ms": ("<=", 1.0),
    "idle_agent_kb_200": ("<=", 0.6),
    "idle_agent_kb_2000": ("<=", 0.6),
    "idle_agent_kb_largest_both": ("<=", 0.6),
}


def _report(
    raw: dict[str, dict[str, list[float]]],
    extra: dict[str, dict[str, list[float]]],
    early: dict[str, int],
    skipped: dict[str, str],
) -> dict[str, object]:
    figures: dict[str, Any] = {}
    for figure, ours_values in raw[OURS].items():
        entry: dict[str, Any] = {OURS: _spread(ours_values)}
        if figure in raw["direct"]:
            entry["direct"] = _spread(raw["direct"][figure])
        theirs = raw[KONNECTIVITY].get(figure)
        if theirs:
            entry[KONNECTIVITY] = _spread(theirs)
            mine, their = statistics.median(ours_values), statistics.median(theirs)
            entry["ratio"] = round(mine / their, 3) if their > 0 else None
        elif figure in skipped:
            entry[KONNECTIVITY] = {"skipped": skipped[figure]}
        if figure in TARGETS and entry.get("ratio") is not None:
            op, bound = TARGETS[figure]
            entry["target_ratio"] = f"{op} {bound}"
            entry["target_met"] = entry["ratio"] >= bound if op == ">=" else entry["ratio"] <= bound
        figures[figure] = entry
    if "echo_added_p50_ms" in figures:  # the stream figures were run (`--figures`)
        figures["echo_added_p50_ms"]["direct_echo_p50_ms"] = _spread(raw["direct"]["echo_p50_ms"])
        figures["echo_p99_ms"]["samples_per_run"] = ECHOES
        figures["fifty_streams_mb_s"]["runs_per_repetition"] = FAIR_FREE_RUNS
        figures["fairness"]["target"] = ">= 0.9 (ours)"
        figures["fairness"]["target_met"] = figures["fairness"][OURS]["median"] >= 0.9
        if figures["fairness"].get("ratio") is None:
            figures["fairness"]["ratio_note"] = "konnectivity's fairness is 0: no ratio"
    top = f"idle_agent_kb_{max(IDLE_AGENTS)}"
    if top in figures:
        figures[top]["target"] = "<= 50 KB (ours)"
        figures[top]["target_met"] = figures[top][OURS]["median"] <= 50
    details = {system: {k: _spread(v, 2) for k, v in values.items()} for system, values in extra.items()}
    return {
        "anchor": {
            KONNECTIVITY: "v0.36.0 proxy-server and proxy-agent, built from sigs.k8s.io/apiserver-network-proxy"
            " by hack/build-anchors.sh; --mode=http-connect over --uds-name, agents over mutual TLS"
        },
        "repetitions": REPETITIONS,
        "figures": figures,
        "details": details,
        "bytes_before_200": early,
        "units": {
            "mb_s": "10^6 bytes a second",
            "kb": "10^3 bytes of the server's resident memory per idle agent",
            "ms": "milliseconds added over the direct TCP path",
        },
        "median": {
            f"{figure}:{system}": entry[system]["median"]
            for figure, entry in figures.items()
            for system in (OURS, KONNECTIVITY)
            if isinstance(entry.get(system), dict) and "median" in entry[system]
        },
    }


def main(argv: list[str] | None = None) -> int:
    """A subset of the figures, printed as JSON (for measuring one change; `make bench` runs `run()`)."""
    global REPETITIONS, IDLE_AGENTS  # noqa: PLW0603 - the run reads them, as `make bench` sets them
    parser = argparse.ArgumentParser(prog="python -m bench.tunnel_bench", description=main.__doc__)
    parser.add_argument("--figures", default="streams,idle", help="streams, idle or both (comma-separated)")
    parser.add_argument("--repetitions", type=int, default=REPETITIONS)
    parser.add_argument("--idle-agents", default=",".join(map(str, IDLE_AGENTS)), help="agent counts, e.g. 2000")
    args = parser.parse_args(argv)
    chosen = tuple(f.strip() for f in args.figures.split(",") if f.strip())
    if not chosen or set(chosen) - {"streams", "idle"}:
        parser.error("--figures takes streams, idle or both")
    REPETITIONS = args.repetitions
    IDLE_AGENTS = tuple(int(n) for n in args.idle_agents.split(","))
    print(json.dumps(run(chosen), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
