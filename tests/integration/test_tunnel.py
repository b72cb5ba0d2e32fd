"""The tunnel's server and agent from their console scripts on the host, driven from outside the way
kube-apiserver's egress selector drives them: HTTP CONNECT over mutual TLS and over a Unix socket.

No Kubernetes here (routing by node name); the end-to-end tests run it with the real apiserver and kubelet.
Targets are small TCP servers on loopback standing in for what sits on an edge node (an echo service that
answers a half-close with `<eof>`, and a firehose that writes until stopped).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from testenv import pki, tunnelhost
from testenv.kubectl import wait_for
from tunnel import frames

NODE = "edge-a"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.sendall(b"<eof>")  # the client's half-close arrived; we can still answer


class _Firehose(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        chunk = b"x" * 65536
        try:
            while True:
                self.request.sendall(chunk)
        except OSError:
            return


GREETING = b"220 edge-service ready\r\n"


class _Greeter(socketserver.BaseRequestHandler):
    """Speaks first, as SSH or SMTP do: its greeting is on the wire as soon as the agent has dialled it."""

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.sendall(GREETING)
            self.request.recv(1)  # hold the connection until the client goes


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, int]]:
    servers = {
        "echo": tunnelhost.target(_Echo),
        "firehose": tunnelhost.target(_Firehose),
        "greeter": tunnelhost.target(_Greeter),
    }
    yield {name: s.server_address[1] for name, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority("tunnel-test-ca")


@pytest.fixture(scope="module")
def certs(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> tunnelhost.Certs:
    return tunnelhost.issue(ca, tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tunnel")


@pytest.fixture(scope="module")
def server(certs: tunnelhost.Certs, workdir: Path) -> Iterator[tunnelhost.Server]:
    s = tunnelhost.server(certs, workdir, "server-0", extra=("--no-direct-fallback", "--dial-timeout=3"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def agent(
    ca: pki.CertificateAuthority,
    certs: tunnelhost.Certs,
    workdir: Path,
    server: tunnelhost.Server,
    targets: dict[str, int],
) -> Iterator[tunnelhost.Running]:
    cert = tunnelhost.node_cert(ca, workdir, NODE)
    a = tunnelhost.agent(
        certs, cert, workdir, NODE, [f"127.0.0.1:{server.agent_port}"], allowed_ports=tuple(targets.values())
    )
    wait_for("the server to list the agent", lambda: _agents(server) == [NODE], timeout=10, interval=0.1)
    yield a
    a.stop()


def _agents(server: tunnelhost.Server) -> list[str]:
    return [a["node"] for a in server.status()["agents"]]


def _client_tls(certs: tunnelhost.Certs, *, with_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def dial(
    server: tunnelhost.Server, certs: tunnelhost.Certs, target: str, *, uds: bool = False
) -> tuple[socket.socket, bytes, bytes]:
    """CONNECT as kube-apiserver does; (socket, response head, bytes that followed the head)."""
    sock = send_connect(server, certs, target, uds=uds)
    head, rest = _read_head(sock)
    return sock, head, rest


def send_connect(server: tunnelhost.Server, certs: tunnelhost.Certs, target: str, *, uds: bool) -> socket.socket:
    """A socket to the server that has sent the CONNECT request and read nothing yet."""
    if uds:
        assert server.uds is not None
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(server.uds))
    else:
        raw = socket.create_connection(("127.0.0.1", server.connect_port))
        sock = _client_tls(certs).wrap_socket(raw, server_hostname="127.0.0.1")
    sock.settimeout(20)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def test_connect_over_tls_carries_bytes_both_ways_after_a_bare_200(
    agent: tunnelhost.Running, server: tunnelhost.Server, certs: tunnelhost.Certs, targets: dict[str, int]
) -> None:
    sock, head, rest = dial(server, certs, f"{NODE}:{targets['echo']}")
    with sock:
        assert head == b"HTTP/1.1 200 Connection established"
        assert rest == b""
        payload = os.urandom(3 * 1024 * 1024)  # several windows' worth
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = b""
        while len(received) < len(payload):
            received += sock.recv(1 << 20)
        sender.join()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("uds", [False, True], ids=["tls", "uds"])
def test_a_target_that_speaks_first_is_heard_only_after_the_200(
    agent: tunnelhost.Running,
    server: tunnelhost.Server,
    certs: tunnelhost.Certs,
    targets: dict[str, int],
    uds: bool,
) -> None:
    # kube-apiserver reads the CONNECT answer first: a target byte before the 200 breaks that answer. The
    # greeting is ready at the agent before the server has answered, so the tunnel must hold it until then.
    expected = b"HTTP/1.1 200 Connection established\r\n\r\n" + GREETING
    for _ in range(20):
        with send_connect(server, certs, f"{NODE}:{targets['greeter']}", uds=uds) as sock:
            received = b""
            while len(received) < len(expected):
                chunk = sock.recv(len(expected) - len(received))
                assert chunk, received
                received += chunk
            assert received == expected


def test_half_close_passes_through_both_ways(
    agent: tunnelhost.Running, server: tunnelhost.Server, certs: tunnelhost.Certs, targets: dict[str, int]
) -> None:
    sock, head, _ = dial(server, certs, f"{NODE}:{targets['echo']}", uds=True)
    with sock:
        assert head.startswith(b"HTTP/1.1 200")
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # like `kubectl cp` ending its stdin
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer == b"last words<eof>"  # the target saw our FIN, answered after it, then closed


def test_a_port_not_allowed_is_refused_with_a_reason(
    agent: tunnelhost.Running, server: tunnelhost.Server, certs: tunnelhost.Certs
) -> None:
    sock, head, rest = dial(server, certs, f"{NODE}:22")
    with sock:
        assert head.startswith(b"HTTP/1.1 403 ")
        assert b"port 22 is not open to the tunnel on node edge-a" in rest


def test_a_host_without_an_agent_gets_502_when_direct_dials_are_off(
    agent: tunnelhost.Running, server: tunnelhost.Server, certs: tunnelhost.Certs, targets: dict[str, int]
) -> None:
    sock, head, rest = dial(server, certs, f"nowhere-node:{targets['echo']}")
    with sock:
        assert head.startswith(b"HTTP/1.1 502 ")
        assert b"not an edge node with a tunnel agent" in rest


def test_bad_requests_get_a_status_and_never_reach_an_agent(server: tunnelhost.Server, certs: tunnelhost.Certs) -> None:
    for request, status in [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"CONNECT no-port HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT a:99999 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT a:1 HTTP/1.1\r\n" + b"X: " + b"y" * 10000 + b"\r\n\r\n", b"431"),
    ]:
        assert server.uds is not None
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(server.uds))
            sock.sendall(request)
            head, _ = _read_head(sock)
            assert head.split(b" ")[1] == status, (request[:40], head)


def test_connect_needs_the_apiservers_client_certificate(server: tunnelhost.Server, certs: tunnelhost.Certs) -> None:
    raw = socket.create_connection(("127.0.0.1", server.connect_port))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        sock = _client_tls(certs, with_cert=False).wrap_socket(raw, server_hostname="127.0.0.1")
        sock.sendall(b"CONNECT edge-a:1 HTTP/1.1\r\n\r\n")
        if not sock.recv(100):
            raise ConnectionResetError("closed without an answer")


def test_a_certificate_not_on_the_allow_list_cannot_connect(
    ca: pki.CertificateAuthority, server: tunnelhost.Server, certs: tunnelhost.Certs, tmp_path: Path
) -> None:
    other = ca.issue("some-other-client", client=True).write(tmp_path, "other")
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(*other)
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.connect_port)), server_hostname="127.0.0.1"
    ) as sock:
        sock.sendall(b"CONNECT edge-a:1 HTTP/1.1\r\n\r\n")
        head, _ = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 403 ")


def test_an_agent_presenting_another_nodes_name_is_refused(
    ca: pki.CertificateAuthority,
    certs: tunnelhost.Certs,
    server: tunnelhost.Server,
    agent: tunnelhost.Running,
    tmp_path: Path,
) -> None:
    cert = tunnelhost.node_cert(ca, tmp_path, "edge-b")  # a real node certificate, for edge-b
    impostor = tunnelhost.agent(
        certs, cert, tmp_path, NODE, [f"127.0.0.1:{server.agent_port}"], allowed_ports=(10250,), wait=False
    )
    try:
        wait_for(
            "the impostor to be refused",
            lambda: "certificate names node 'edge-b', agent claims 'edge-a'" in impostor.log_text(),
            timeout=15,
            interval=0.2,
        )
        assert _agents(server) == [NODE]  # still only the genuine agent
        assert 'yurt_tunnel_agent_rejections_total{reason="node-mismatch"}' in server.metrics()
        status = impostor.status()
        assert status["servers"] == []
        assert any("403" in e for e in status["lastErrors"].values())
    finally:
        impostor.stop()


def test_a_stalled_reader_does_not_slow_other_streams(
    agent: tunnelhost.Running, server: tunnelhost.Server, certs: tunnelhost.Certs, targets: dict[str, int]
) -> None:
    stalled, head, _ = dial(server, certs, f"{NODE}:{targets['firehose']}")
    with stalled:
        assert head.startswith(b"HTTP/1.1 200")
        stalled.recv(1)  # the firehose is flowing; from now on nobody reads it: its window fills and stays full
        time.sleep(0.5)
        for _ in range(3):  # other streams on the same agent connection still move everything
            test_connect_over_tls_carries_bytes_both_ways_after_a_bare_200(agent, server, certs, targets)
        assert stalled.recv(65536)  # and the stalled stream is alive, not reset


def test_many_concurrent_streams_each_get_their_own_bytes(
    agent: tunnelhost.Running, server: tunnelhost.Server, certs: tunnelhost.Certs, targets: dict[str, int]
) -> None:
    results: dict[int, str] = {}

    def one(i: int) -> None:
        sock, head, _ = dial(server, certs, f"{NODE}:{targets['echo']}", uds=True)
        with sock:
            payload = os.urandom(100_000 + i)
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            same = got == payload + b"<eof>"
            results[i] = "ok" if head.startswith(b"HTTP/1.1 200") and same else f"{head!r}, {len(got)} bytes back"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == dict.fromkeys(range(40), "ok")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=600), terminate=st.booleans())
def test_fuzzed_connect_requests_never_crash_the_server(
    server: tunnelhost.Server, garbage: bytes, terminate: bool
) -> None:
    assert server.uds is not None
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(str(server.uds))
        sock.sendall(garbage + (b"\r\n\r\n" if terminate else b""))
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 5"), answer[:80]
    assert server.running()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.binary(max_size=80), min_size=1, max_size=6))
def test_fuzzed_frames_from_an_agent_never_crash_the_server(
    ca: pki.CertificateAuthority,
    certs: tunnelhost.Certs,
    server: tunnelhost.Server,
    agent: tunnelhost.Running,
    targets: dict[str, int],
    workdir: Path,
    messages: list[bytes],
) -> None:
    cert = workdir / "node-edge-fuzz.pem"
    if not cert.exists():
        tunnelhost.node_cert(ca, workdir, "edge-fuzz")
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(cert)
    with ws_connect(
        f"wss://127.0.0.1:{server.agent_port}/v1/agent",
        ssl=context,
        additional_headers={"X-Yurt-Tunnel-Node": "edge-fuzz"},
    ) as ws:
        try:
            for message in messages:
                ws.send(message)
            ws.send(frames.Frame(frames.Kind.PING, 0, b"12345678").encode())
            ws.recv(timeout=5)  # a PONG if all was well-formed, or the server closed us for a protocol error
        except (ConnectionClosed, TimeoutError):
            pass
    assert server.running()
    sock, head, _ = dial(server, certs, f"{NODE}:{targets['echo']}", uds=True)
    with sock:
        assert head.startswith(b"HTTP/1.1 200")  # the genuine agent was never disturbed


def test_an_agent_without_a_certificate_or_on_the_wrong_path_is_refused(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, server: tunnelhost.Server, workdir: Path
) -> None:
    url = f"wss://127.0.0.1:{server.agent_port}"
    with (
        pytest.raises((InvalidHandshake, ConnectionClosed, ssl.SSLError, OSError)),
        ws_connect(f"{url}/v1/agent", ssl=_client_tls(certs, with_cert=False)) as ws,
    ):
        ws.recv(timeout=5)
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(tunnelhost.node_cert(ca, workdir, "edge-path"))
    with pytest.raises(InvalidStatus) as refused, ws_connect(f"{url}/elsewhere", ssl=context):
        pass
    assert refused.value.response.status_code == 404


def test_status_and_metrics_describe_the_agents(
    agent: tunnelhost.Running, server: tunnelhost.Server, targets: dict[str, int]
) -> None:
    status = server.status()
    assert status["server"] == "server-0"
    (entry,) = status["agents"]
    assert entry["node"] == NODE and entry["streamsOpened"] > 0 and entry["bytesReceived"] > 0
    metrics = server.metrics()
    assert "yurt_tunnel_agents_connected 1.0" in metrics
    assert 'yurt_tunnel_connect_requests_total{code="200"}' in metrics
    assert 'yurt_tunnel_dial_failures_total{reason="not-allowed"}' in metrics
    agent_status = agent.status()
    assert agent_status["node"] == NODE and agent_status["servers"][0]["server"] == "server-0"
    assert "yurt_tunnel_agent_servers_connected 1.0" in agent.metrics()


def test_an_agent_holds_every_replica_and_survives_losing_one(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, targets: dict[str, int], tmp_path: Path
) -> None:
    replicas = [tunnelhost.server(certs, tmp_path, f"replica-{i}", extra=("--no-direct-fallback",)) for i in range(2)]
    cert = tunnelhost.node_cert(ca, tmp_path, "edge-ha")
    addresses = [f"127.0.0.1:{r.agent_port}" for r in replicas]
    ha = tunnelhost.agent(certs, cert, tmp_path, "edge-ha", addresses, allowed_ports=(targets["echo"],))
    try:
        wait_for("the agent on both replicas", lambda: len(ha.status()["servers"]) == 2, timeout=15, interval=0.1)
        replicas[0].kill()
        # at once, with no reconnect in between: the other replica already holds a connection to the node
        sock, head, _ = dial(replicas[1], certs, f"edge-ha:{targets['echo']}", uds=True)
        with sock:
            assert head.startswith(b"HTTP/1.1 200")
        replicas[0].start()
        replicas[0].wait_ready()
        wait_for("the agent back on the restarted replica", lambda: len(ha.status()["servers"]) == 2, timeout=15)
        sock, head, _ = dial(replicas[0], certs, f"edge-ha:{targets['echo']}", uds=True)
        with sock:
            assert head.startswith(b"HTTP/1.1 200")
    finally:
        ha.stop()
        for r in replicas:
            r.stop()


def test_a_hostile_server_never_crashes_the_agent(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, targets: dict[str, int], tmp_path: Path
) -> None:
    """A server with a valid certificate that sends garbage, bad frames and odd OPENs: the agent refuses what
    it must, drops the connection when the protocol is broken, dials again, and stays up."""
    rng = random.Random(5)  # noqa: S311 - reproducible garbage, not cryptography
    connections: list[int] = []

    def hostile(ws: ServerConnection) -> None:
        connections.append(len(connections))
        stream = 2
        with contextlib.suppress(ConnectionClosed):
            for _ in range(200):
                pick = rng.random()
                if pick < 0.3:
                    message = rng.randbytes(rng.randint(0, 40))
                elif pick < 0.8:  # a well-formed OPEN with a target the agent must judge
                    target = rng.choice([f"{NODE}:{targets['echo']}", "10.9.9.9:10250", f"{NODE}:22", "x" * 300, "a:b"])
                    message = bytes([frames.Kind.OPEN]) + stream.to_bytes(4, "big") + target.encode()[:261]
                    stream += 2
                else:
                    kind = rng.choice(list(frames.Kind))
                    message = bytes([kind]) + rng.randint(0, 8).to_bytes(4, "big") + rng.randbytes(rng.randint(0, 8))
                ws.send(message)
            ws.recv(timeout=2)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    with ws_serve(hostile, "127.0.0.1", 0, ssl=context) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.socket.getsockname()[1]
        cert = tunnelhost.node_cert(ca, tmp_path, NODE)
        victim = tunnelhost.agent(
            certs, cert, tmp_path, NODE, [f"127.0.0.1:{port}"], allowed_ports=(targets["echo"],), wait=False
        )
        try:
            wait_for("the agent to come back several times", lambda: len(connections) >= 4, timeout=60, interval=0.2)
            assert victim.running()
            assert victim.get("/healthz")[0] == 200
            assert "protocol" in victim.log_text()  # it saw the protocol broken and said so
            assert "Traceback" not in victim.log_text()
        finally:
            victim.stop()
            server.shutdown()
