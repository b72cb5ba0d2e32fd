"""The HTTP CONNECT parser and answers, byte for byte, and the routing table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel import agent, config, connect, errors, routes


@pytest.mark.parametrize(
    ("head", "target"),
    [
        (b"CONNECT 10.0.0.7:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", connect.Target("10.0.0.7", 10250)),
        (b"CONNECT node-1:10250 HTTP/1.1\r\n\r\n", connect.Target("node-1", 10250)),
        (b"CONNECT edge.example.org:9100 HTTP/1.0\r\nUser-Agent: x\r\n\r\n", connect.Target("edge.example.org", 9100)),
        (b"CONNECT [fd00::2:1]:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", connect.Target("fd00::2:1", 10250)),
    ],
)
def test_what_the_apiserver_sends_is_understood(head: bytes, target: connect.Target) -> None:
    assert connect.head_complete(head) == len(head)
    assert connect.parse(head) == target


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 405),
        (b"CONNECT a:1 HTTP/2\r\n\r\n", 400),
        (b"CONNECT a:1\r\n\r\n", 400),
        (b"CONNECT a HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT :80 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a:0 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a:65536 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a:x1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a_b:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [zz]:1 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT [::1] HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"CONNECT a:1 HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        ("CONNECT ä:1 HTTP/1.1\r\n\r\n".encode(), 400),
        (b"CONNECT a:1 HTTP/1.1\r\nX: " + b"y" * connect.MAX_HEAD + b"\r\n\r\n", 431),
    ],
)
def test_anything_else_is_refused_with_its_status(head: bytes, status: int) -> None:
    with pytest.raises(errors.BadConnect) as refused:
        connect.parse(head)
    assert refused.value.status == status


def test_an_incomplete_head_is_not_parsed_yet() -> None:
    assert connect.head_complete(b"CONNECT a:1 HTTP/1.1\r\nHost: x\r\n") == 0


def test_200_is_the_head_alone_and_refusals_say_why() -> None:
    assert connect.response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert connect.response(502, "no agent\r\nfor node x") == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 21\r\nConnection: close\r\n\r\nno agent  for node x\n"
    )


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_bad_connect(head: bytes) -> None:
    try:
        target = connect.parse(head)
    except errors.BadConnect as exc:
        assert 400 <= exc.status < 500
    else:
        assert 0 < target.port < 65536 and target.host


def test_targets_route_by_node_address_then_name_and_the_newest_session_serves() -> None:
    table: routes.Routes[str] = routes.Routes()
    table.set_addresses("edge-1", ["10.0.0.7", "edge-1.lan"], edge=True)
    table.set_addresses("cloud-1", ["10.0.0.1"])
    assert table.route("10.0.0.7") == routes.Agent("edge-1", None)  # known edge node, no agent yet
    assert table.is_edge("edge-1") and not table.is_edge("cloud-1")
    table.add("edge-1", "old")
    table.add("edge-1", "new")
    assert table.route("10.0.0.7") == routes.Agent("edge-1", "new")
    assert table.route("edge-1") == routes.Agent("edge-1", "new")
    table.remove("edge-1", "new")
    assert table.route("edge-1.lan") == routes.Agent("edge-1", "old")
    assert table.route("10.0.0.1") == routes.Direct()
    assert table.route("cloud-1") == routes.Direct()
    assert table.route("10.9.9.9") == routes.Direct()
    table.add("edge-2", "s2")  # an agent for a node the API has not told us about: routed by name
    assert table.route("edge-2") == routes.Agent("edge-2", "s2") and table.is_edge("edge-2")


def test_addresses_move_with_their_node_and_a_relist_forgets_the_gone() -> None:
    table: routes.Routes[str] = routes.Routes()
    table.set_addresses("a", ["10.0.0.7"], edge=True)
    table.set_addresses("b", ["10.0.0.8"], edge=True)
    table.set_addresses("a", ["10.0.0.9"], edge=True)
    assert table.route("10.0.0.7") == routes.Direct() and table.route("10.0.0.9") == routes.Agent("a", None)
    table.replace_nodes({"b": (["10.0.0.8"], True, ())})
    assert table.route("10.0.0.9") == routes.Direct() and table.route("a") == routes.Direct()
    assert table.route("10.0.0.8") == routes.Agent("b", None)


def test_an_edge_node_listing_another_edge_nodes_address_captures_nothing() -> None:
    """Last writer used to win: node X listing node Y's address received Y's CONNECTs."""
    table: routes.Routes[str] = routes.Routes()
    table.set_addresses("edge-y", ["10.0.0.8"], edge=True)
    table.add("edge-y", "y")
    table.add("edge-x", "x")
    table.set_addresses("edge-x", ["10.0.0.7", "10.0.0.8", "edge-y"], edge=True)
    route = table.route("10.0.0.8")
    assert isinstance(route, routes.Refused)
    assert "edge-x" in route.reason and "edge-y" in route.reason and "\n" not in route.reason
    assert table.route("edge-y") == routes.Agent("edge-y", "y")  # the node name wins over a listed address
    assert table.route("10.0.0.7") == routes.Agent("edge-x", "x")
    table.set_addresses("edge-x", ["10.0.0.7"], edge=True)  # X stops claiming: Y has its address back
    assert table.route("10.0.0.8") == routes.Agent("edge-y", "y")


def test_an_edge_node_never_captures_a_cloud_nodes_address_or_pod_network() -> None:
    table: routes.Routes[str] = routes.Routes()
    table.set_addresses("cloud-1", ["10.0.0.1", "cloud-1"], pod_cidrs=["10.244.0.0/24"])
    table.add("edge-x", "x")
    # a kubelet, a webhook pod on the cloud node, loopback and the metadata service
    table.set_addresses("edge-x", ["10.0.0.1", "10.244.0.5", "127.0.0.1", "169.254.169.254", "cloud-1"], edge=True)
    for host in ("10.0.0.1", "10.244.0.5", "127.0.0.1", "169.254.169.254", "cloud-1"):
        assert table.route(host) == routes.Direct(), host
    # removing its own edge label does not make an agent's node a cloud node
    table.set_addresses("edge-x", ["10.0.0.7"], edge=False)
    assert table.route("10.0.0.7") == routes.Agent("edge-x", "x")


def test_edge_cidrs_limit_what_routes_to_agents() -> None:
    table: routes.Routes[str] = routes.Routes(routes.parse_cidrs(["192.168.50.0/24"]))
    table.add("edge-x", "x")
    table.set_addresses("edge-x", ["192.168.50.7", "10.96.0.10", "edge-x.lan"], edge=True)
    assert table.route("192.168.50.7") == routes.Agent("edge-x", "x")
    assert table.route("10.96.0.10") == routes.Direct()  # a Service address the node listed
    assert table.route("edge-x.lan") == routes.Direct()
    assert table.route("edge-x") == routes.Agent("edge-x", "x")  # its name still routes
    with pytest.raises(ValueError):
        routes.parse_cidrs(["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("localhost", "a loopback name"),
        ("169.254.169.254", "a cloud metadata service"),
        ("fd00:ec2::254", "a cloud metadata service"),
        ("metadata.google.internal", "a cloud metadata service"),
        ("Metadata.Google.Internal.", "a cloud metadata service"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", None),
        ("kubernetes.default.svc", None),
    ],
)
def test_special_addresses_are_never_targets(host: str, why: str | None) -> None:
    assert routes.special_address(host) == why


def _agent_settings() -> config.AgentSettings:
    return config.AgentSettings(
        node_name="edge-1",
        servers=("s:1",),
        ca_file="ca",
        cert_file="cert",
        allowed_ports=frozenset({10250, 9100}),
        node_addresses=frozenset({"10.0.0.7"}),
    )


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("edge-1:10250", "127.0.0.1"),
        ("localhost:9100", "127.0.0.1"),
        ("10.0.0.7:10250", "10.0.0.7"),
        ("::1:10250", None),
    ],
)
def test_the_agent_dials_only_its_own_node(target: str, host: str | None) -> None:
    settings = _agent_settings()
    if host is None:
        with pytest.raises(errors.BadConnect):
            connect.parse_target(target)
        return
    assert agent.dial_host(connect.parse_target(target), settings) == host


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("edge-1:22", "port 22 is not open to the tunnel on node edge-1 (allowed: 9100,10250)"),
        ("10.0.0.8:10250", "10.0.0.8 is not an address of node edge-1"),
        ("edge-2:10250", "edge-2 is not an address of node edge-1"),
        ("169.254.169.254:10250", "169.254.169.254 is not an address of node edge-1"),
    ],
)
def test_the_agent_refuses_other_ports_and_hosts_with_403(target: str, reason: str) -> None:
    with pytest.raises(errors.DialFailed) as refused:
        agent.dial_host(connect.parse_target(target), _agent_settings())
    assert (refused.value.status, refused.value.message) == (403, reason)


def test_reconnect_delays_are_jittered_doubling_and_capped() -> None:
    settings = config.AgentSettings(node_name="n", servers=("s:1",), ca_file="", cert_file="", backoff_max_s=8)
    delay, waits = 1.0, []
    for _ in range(8):
        wait, delay = agent.next_delay(delay, settings)
        waits.append(wait)
    assert delay == 8
    assert 0.5 <= waits[0] <= 1.0
    assert all(4 <= w <= 8 for w in waits[4:])
