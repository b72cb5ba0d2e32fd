"""Attacks on the tunnel server's trust boundaries, each performed from outside against the console scripts on
loopback, and shown to fail: a second agent for a live node, an agent flooding PINGs or refused OPENs without
reading, CONNECTs to loopback and cloud metadata through the direct fallback, a front end open to any
certificate, `/v1/status` read from another host, and (with the real kube-apiserver) an edge node listing
another node's address in its status to capture that node's traffic.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from testenv import cluster, pki, tunnelhost
from testenv.kubectl import wait_for
from tunnel import frames

NODE = "edge-a"
QUEUE_CAP = 65536


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    target = tunnelhost.target(_Echo)
    yield target.server_address[1]
    target.shutdown()
    target.server_close()


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority("tunnel-attack-ca")


@pytest.fixture(scope="module")
def certs(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> tunnelhost.Certs:
    return tunnelhost.issue(ca, tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attacks")


@pytest.fixture(scope="module")
def server(certs: tunnelhost.Certs, workdir: Path) -> Iterator[tunnelhost.Server]:
    """Direct dials on (the default), a small queue cap so a flood reaches it quickly."""
    s = tunnelhost.server(
        certs,
        workdir,
        "server-0",
        extra=("--dial-timeout=3", f"--max-queued-bytes={QUEUE_CAP}", "--serve-address=0.0.0.0"),
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def agent(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, workdir: Path, server: tunnelhost.Server, echo: int
) -> Iterator[tunnelhost.Running]:
    a = tunnelhost.agent(
        certs,
        tunnelhost.node_cert(ca, workdir, NODE),
        workdir,
        NODE,
        [f"127.0.0.1:{server.agent_port}"],
        allowed_ports=(echo,),
    )
    wait_for("the agent on the server", lambda: NODE in _agents(server), timeout=15, interval=0.1)
    yield a
    a.stop()


def _agents(server: tunnelhost.Server) -> list[str]:
    return [a["node"] for a in server.status()["agents"]]


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _connect(server: tunnelhost.Server, target: str) -> tuple[socket.socket, str]:
    """CONNECT over the server's Unix socket; (socket, response head)."""
    assert server.uds is not None
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(20)
    sock.connect(str(server.uds))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head.decode(errors="replace")


def _answer(server: tunnelhost.Server, target: str) -> str:
    sock, head = _connect(server, target)
    sock.close()
    return head


def _echo_works(server: tunnelhost.Server, target: str) -> bool:
    sock, head = _connect(server, target)
    with sock:
        if not head.startswith("HTTP/1.1 200"):
            return False
        sock.sendall(b"still here")
        return sock.recv(64) == b"still here"


def _agent_ws(certs: tunnelhost.Certs, cert: Path, server: tunnelhost.Server, node: str) -> ClientConnection:
    """A raw agent connection that reads nothing: a tiny receive buffer, a one-message queue."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(cert)
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.agent_port))
    return ws_connect(
        f"wss://127.0.0.1:{server.agent_port}/v1/agent",
        sock=raw,
        ssl=context,
        server_hostname="127.0.0.1",
        additional_headers={"X-Yurt-Tunnel-Node": node},
        max_queue=1,
        ping_interval=None,
    )


# --- an agent that stops answering ------------------------------------------------------------------------------


def test_an_agent_that_stops_answering_is_dropped(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, tmp_path: Path
) -> None:
    """An agent whose tunnel session no longer answers is dropped within about two keepalive intervals, so
    CONNECTs for its node get a 502 at once instead of waiting on an agent that will never dial. Its websocket
    library may still answer websocket pings on its own (this raw client's does until its one-message queue is
    full): the server's keepalive is a tunnel PING, answered by the agent's session itself."""
    server = tunnelhost.server(certs, tmp_path, "keepalive", extra=("--keepalive=1", "--no-direct-fallback"))
    try:
        with _agent_ws(certs, tunnelhost.node_cert(ca, tmp_path, "edge-mute"), server, "edge-mute"):
            wait_for(
                "the mute agent to join",
                lambda: [a["node"] for a in server.status()["agents"]] == ["edge-mute"],
                timeout=10,
            )
            wait_for("the server to drop the mute agent", lambda: server.status()["agents"] == [], timeout=20)
            with socket.socket(socket.AF_UNIX) as client:
                assert server.uds is not None
                client.connect(str(server.uds))
                client.sendall(b"CONNECT edge-mute:10250 HTTP/1.1\r\nHost: edge-mute\r\n\r\n")
                assert client.recv(200).startswith(b"HTTP/1.1 502")
        assert "agent silent, dropping it node=edge-mute" in server.log_text()
    finally:
        server.stop()


def test_agents_get_no_tls_session_tickets_to_resume_with(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, server: tunnelhost.Server, tmp_path: Path
) -> None:
    """Every agent connection is a full handshake, its client certificate verified each time: the agent port
    issues no TLS session tickets (agents never resumed; the tickets were CPU spent on every reconnect)."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(tunnelhost.node_cert(ca, tmp_path, "edge-ticket"))
    with (
        socket.create_connection(("127.0.0.1", server.agent_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /not-the-agent-path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):  # TLS 1.3 tickets, when sent, come before this answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 404")
        assert tls.version() == "TLSv1.3"
        assert tls.session is not None and not tls.session.has_ticket


# --- a second agent for a live node ---------------------------------------------------------------------------


def test_a_second_agent_with_the_same_certificate_does_not_replace_a_live_one(
    ca: pki.CertificateAuthority, certs: tunnelhost.Certs, echo: int, tmp_path: Path
) -> None:
    """The leaked certificate's agent is refused while the genuine one answers pings; when the live one goes
    silent (frozen with SIGSTOP: its socket stays open) the newcomer replaces it. A long keepalive here, so the
    ping on arrival, not the keepalive, is what finds the silent one."""
    server = tunnelhost.server(certs, tmp_path, "dup", extra=("--keepalive=60",))
    node = "edge-dup"
    cert = tunnelhost.node_cert(ca, tmp_path, node)  # one certificate, as if leaked
    first = tunnelhost.agent(
        certs, cert, tmp_path / "first", node, [f"127.0.0.1:{server.agent_port}"], allowed_ports=(echo,)
    )
    second: tunnelhost.Running | None = None
    try:
        wait_for("the first agent", lambda: node in _agents(server), timeout=15, interval=0.1)
        (live,) = [a["remote"] for a in server.status()["agents"] if a["node"] == node]
        second = tunnelhost.agent(
            certs,
            cert,
            tmp_path / "second",
            node,
            [f"127.0.0.1:{server.agent_port}"],
            allowed_ports=(echo,),
            wait=False,
        )
        duplicate = 'yurt_tunnel_agent_rejections_total{reason="duplicate"}'
        wait_for("the second agent refused twice", lambda: _metric(server.metrics(), duplicate) >= 2, timeout=30)
        assert [a["remote"] for a in server.status()["agents"] if a["node"] == node] == [live]
        assert "409" in " ".join(second.status()["lastErrors"].values())
        assert server.log_text().count(f"a second connection for the node node={node}") == 1  # logged once
        assert _echo_works(server, f"{node}:{echo}")
        assert _metric(first.metrics(), 'yurt_tunnel_agent_dials_total{outcome="connected"}') == 1

        # The live one stops answering (frozen, its socket still open): the newcomer replaces it.
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGSTOP)
        try:
            wait_for(
                "the second agent to replace the silent one",
                lambda: [a["remote"] for a in server.status()["agents"] if a["node"] == node] not in ([live], []),
                timeout=40,
            )
            assert "agent connection silent, replacing it" in server.log_text()
            assert _echo_works(server, f"{node}:{echo}")
            assert _metric(second.metrics(), 'yurt_tunnel_agent_dials_total{outcome="connected"}') == 1
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        server.stop()


# --- flooding ---------------------------------------------------------------------------------------------------


def _flood(ws: ClientConnection, messages: Iterator[bytes]) -> list[str]:
    """Send without ever reading until the server closes us; the outcome in the list."""
    outcome: list[str] = []

    def run() -> None:
        try:
            for message in messages:
                ws.send(message)
            outcome.append("never closed")
        except (ConnectionClosed, OSError) as exc:
            outcome.append(f"closed: {exc!r}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return outcome


def test_an_agent_flooding_pings_without_reading_is_closed_and_others_are_unaffected(
    ca: pki.CertificateAuthority,
    certs: tunnelhost.Certs,
    server: tunnelhost.Server,
    agent: tunnelhost.Running,
    echo: int,
    tmp_path: Path,
) -> None:
    before = _metric(server.metrics(), "yurt_tunnel_flood_closes_total")
    ping = frames.Frame(frames.Kind.PING, 0, b"12345678").encode()
    highest = 0
    with _agent_ws(certs, tunnelhost.node_cert(ca, tmp_path, "edge-pinger"), server, "edge-pinger") as ws:
        outcome = _flood(ws, (ping for _ in range(200_000)))
        while not outcome:
            agents = server.status()["agents"]
            highest = max([highest, *(a["queuedBytes"] for a in agents if a["node"] == "edge-pinger")])
            assert _echo_works(server, f"{NODE}:{echo}")  # the genuine agent's streams keep flowing
    assert outcome[0].startswith("closed"), outcome
    assert highest <= QUEUE_CAP
    assert _metric(server.metrics(), "yurt_tunnel_flood_closes_total") == before + 1
    assert "PINGs a second" in server.log_text()
    assert agent.running() and _echo_works(server, f"{NODE}:{echo}")


def test_an_agent_flooding_refused_opens_without_reading_is_capped_then_closed(
    ca: pki.CertificateAuthority,
    certs: tunnelhost.Certs,
    server: tunnelhost.Server,
    agent: tunnelhost.Running,
    echo: int,
    tmp_path: Path,
) -> None:
    """Each OPEN from an agent is refused with a REFUSE the agent must read: past the cap the server stops
    reading from it (its queue stays under the cap), and closes it when it does not catch up."""
    before = _metric(server.metrics(), "yurt_tunnel_flood_closes_total")
    opens = (frames.Frame(frames.Kind.OPEN, 2 * i + 1, b"10.1.2.3:10250").encode() for i in range(2_000_000))
    highest = 0
    with _agent_ws(certs, tunnelhost.node_cert(ca, tmp_path, "edge-opener"), server, "edge-opener") as ws:
        outcome = _flood(ws, opens)
        while not outcome:
            agents = server.status()["agents"]
            highest = max([highest, *(a["queuedBytes"] for a in agents if a["node"] == "edge-opener")])
            assert _echo_works(server, f"{NODE}:{echo}")
    assert outcome[0].startswith("closed"), outcome
    assert highest <= QUEUE_CAP + 256  # every time it was looked at, the queue was under the cap
    assert _metric(server.metrics(), "yurt_tunnel_flood_closes_total") == before + 1
    # What the queue held when the server gave up on it, from its own log line: the polls above may miss the
    # few seconds the queue spends at the cap on a loaded machine, the log line does not.
    unread = [int(n) for n in re.findall(r"has not read (\d+) queued bytes", server.log_text())]
    assert unread and QUEUE_CAP // 2 < unread[-1] <= QUEUE_CAP + 256, unread  # it reached the cap, and stayed there
    assert agent.running() and _echo_works(server, f"{NODE}:{echo}")


# --- direct dials and the front end -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1", "resolves to 127.0.0.1, loopback"),  # a name to the parser, loopback once resolved
        ("localhost", "a loopback name"),
        ("[::1]", "loopback"),
        ("169.254.169.254", "a cloud metadata service"),
        ("metadata.google.internal", "a cloud metadata service"),
        ("0.0.0.0", "unspecified"),
    ],
)
def test_direct_dials_never_reach_loopback_or_metadata(
    server: tunnelhost.Server, echo: int, target: str, why: str
) -> None:
    head = _answer(server, f"{target}:{echo}")
    assert head.startswith("HTTP/1.1 403"), head
    assert why in head and "never dialled" in head, head


def test_direct_dials_count_against_max_pending_dials(certs: tunnelhost.Certs, tmp_path: Path) -> None:
    """A direct dial that hangs holds its place in `--max-pending-dials` like a dial through an agent: with
    one allowed, a second CONNECT meanwhile is answered 503 at once. The hanging target is a listener on this
    host's own address whose accept queue is full (SYNs to it go unanswered; nothing leaves the host)."""
    address = _own_address()
    with socket.socket() as full:
        full.bind((address, 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(8):  # bounded: fill the accept queue until a connection no longer completes
                filler = socket.socket()
                filler.settimeout(1)
                fillers.append(filler)
                try:
                    filler.connect((address, port))
                except TimeoutError:
                    break
            else:
                pytest.fail("the listener's accept queue never filled")
            s = tunnelhost.server(certs, tmp_path, "pending", extra=("--max-pending-dials=1", "--dial-timeout=30"))
            try:
                hanging = socket.socket(socket.AF_UNIX)
                assert s.uds is not None
                hanging.connect(str(s.uds))
                hanging.sendall(f"CONNECT {address}:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                wait_for("the direct dial to be pending", lambda: s.status()["pendingDials"] == 1, timeout=10)
                second, head = _connect(s, f"{address}:{port}")
                second.close()
                assert head.startswith("HTTP/1.1 503") and "too many dials pending" in head, head
                hanging.close()
            finally:
                s.stop()
        finally:
            for filler in fillers:
                filler.close()


def test_the_front_end_does_not_start_open_to_any_certificate(certs: tunnelhost.Certs, tmp_path: Path) -> None:
    argv = [
        tunnelhost.script("yurt-tunnel-server"),
        *(f"--agent-cert={certs.server_cert}", f"--agent-key={certs.server_key}", f"--agent-ca={certs.ca}"),
        *(f"--connect-cert={certs.server_cert}", f"--connect-key={certs.server_key}", f"--connect-ca={certs.ca}"),
        "--connect-bind-address=127.0.0.1",
        "--serve-address=127.0.0.1",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--connect-allowed-names is required" in proc.stderr and "--connect-allow-any-client" in proc.stderr


def _own_address() -> str:
    """A non-loopback address of this host (a UDP socket is routed, nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))
        address: str = probe.getsockname()[0]
    return address


def test_status_answers_loopback_only_and_metrics_name_no_node(
    server: tunnelhost.Server, agent: tunnelhost.Running
) -> None:
    address = _own_address()
    assert not address.startswith("127.")
    url = f"http://{address}:{server.serve_port}"  # this host's own address: the traffic stays on it
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/v1/status", timeout=5)
    assert refused.value.code == 403
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
        assert resp.status == 200
    assert "yurt_tunnel_agents_connected" in metrics
    status = server.status()  # on loopback: every agent and where it connects from
    assert NODE in [a["node"] for a in status["agents"]]
    for entry in status["agents"]:
        assert entry["node"] not in metrics and entry["remote"].rsplit(":", 1)[0] not in metrics.replace(
            "127.0.0.1:", ""
        )
    assert NODE not in metrics and "127.0.0.1" not in metrics


def test_status_on_the_connect_port_needs_an_allowed_client_certificate(
    certs: tunnelhost.Certs, ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    s = tunnelhost.server(certs, tmp_path, "status-over-connect", extra=("--status-on-connect",))
    try:

        def get(cert: Path, key: Path | None) -> str:
            context = ssl.create_default_context(cafile=str(certs.ca))
            context.load_cert_chain(cert, key)
            with (
                socket.create_connection(("127.0.0.1", s.connect_port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
            return answer.decode()

        assert get(certs.client_cert, certs.client_key).startswith("HTTP/1.1 200")
        assert '"server": "status-over-connect"' in get(certs.client_cert, certs.client_key)
        kubelet = tunnelhost.node_cert(ca, tmp_path, "edge-nosy")  # signed by the same CA, not allowed
        assert get(kubelet, None).startswith("HTTP/1.1 403")
    finally:
        s.stop()


# --- routing by Node objects from the real kube-apiserver -------------------------------------------------------


def _node(name: str, *, edge: bool, pod_cidr: str | None = None) -> dict[str, object]:
    metadata: dict[str, object] = {"name": name}
    if edge:
        metadata["labels"] = {"openyurt.io/is-edge-worker": "true"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": metadata, "spec": {"podCIDR": pod_cidr} if pod_cidr else {}}


def _set_addresses(kube: cluster.Cluster, node: str, addresses: list[tuple[str, str]]) -> None:
    """What the node's own kubelet may write into its status (NodeRestriction lets it)."""
    body = {"status": {"addresses": [{"type": kind, "address": a} for kind, a in addresses]}}
    kube.kubectl.run("patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(body))


def test_an_edge_node_listing_other_nodes_addresses_captures_none_of_their_traffic(
    cloud: cluster.Cluster, ca: pki.CertificateAuthority, certs: tunnelhost.Certs, echo: int, tmp_path: Path
) -> None:
    """Agents are given no --node-ip, so an OPEN that reaches one is refused with the name of the node whose
    agent got it: the answers show where each address routes, and nothing leaves this host."""
    assert cloud.plane is not None
    cloud.kubectl.apply(
        [
            _node("edge-x", edge=True),
            _node("edge-y", edge=True),
            _node("cloud-c", edge=False, pod_cidr="10.250.0.0/24"),
        ]
    )
    _set_addresses(cloud, "edge-y", [("InternalIP", "10.255.0.8"), ("Hostname", "edge-y")])
    _set_addresses(cloud, "cloud-c", [("InternalIP", "10.255.0.1"), ("Hostname", "cloud-c")])
    _set_addresses(cloud, "edge-x", [("InternalIP", "10.255.0.7"), ("Hostname", "edge-x")])
    s = tunnelhost.server(
        certs,
        tmp_path,
        "routing",
        kubeconfig=cloud.plane.admin_kubeconfig,
        extra=("--no-direct-fallback", "--dial-timeout=3"),
    )
    agents = [
        tunnelhost.agent(
            certs,
            tunnelhost.node_cert(ca, tmp_path, n),
            tmp_path,
            n,
            [f"127.0.0.1:{s.agent_port}"],
            allowed_ports=(echo,),
        )
        for n in ("edge-x", "edge-y")
    ]
    try:
        wait_for("both agents", lambda: sorted(_agents(s)) == ["edge-x", "edge-y"], timeout=20, interval=0.1)
        port = echo
        assert "not an address of node edge-y" in _answer(s, f"10.255.0.8:{port}")  # Y's own address: Y
        assert "not an address of node edge-x" in _answer(s, f"10.255.0.7:{port}")

        # X lists Y's address, the cloud node's, a pod address of the cloud node, and Y's name.
        _set_addresses(
            cloud,
            "edge-x",
            [("InternalIP", "10.255.0.7"), ("InternalIP", "10.255.0.8"), ("ExternalIP", "10.255.0.1"),
             ("ExternalIP", "10.250.0.5"), ("Hostname", "edge-y")],
        )  # fmt: skip
        wait_for(
            "the server to see X's claim",
            lambda: "listed by more than one node" in _answer(s, f"10.255.0.8:{port}"),
            timeout=20,
            interval=0.2,
        )
        contested = _answer(s, f"10.255.0.8:{port}")
        assert contested.startswith("HTTP/1.1 502") and "edge-x, edge-y" in contested, contested
        for cloud_address in ("10.255.0.1", "10.250.0.5"):
            head = _answer(s, f"{cloud_address}:{port}")
            assert head.startswith("HTTP/1.1 502") and "is not an edge node with a tunnel agent" in head, head
        assert _answer(s, f"edge-y:{port}").startswith("HTTP/1.1 200")  # a node name is the node's: Y dialled
        connected = 'yurt_tunnel_agent_dials_total{outcome="connected"}'
        assert [_metric(a.metrics(), connected) for a in agents] == [0, 1]
        assert _metric(s.metrics(), 'yurt_tunnel_dial_failures_total{reason="ambiguous"}') >= 1
        assert "listed by more than one node" in s.log_text()

        # X withdraws: Y has its address back.
        _set_addresses(cloud, "edge-x", [("InternalIP", "10.255.0.7")])
        wait_for(
            "Y's address back to Y",
            lambda: "not an address of node edge-y" in _answer(s, f"10.255.0.8:{port}"),
            timeout=20,
            interval=0.2,
        )
    finally:
        for a in agents:
            a.stop()
        s.stop()
        cloud.kubectl.run("delete", "node", "edge-x", "edge-y", "cloud-c", "--wait=false")
