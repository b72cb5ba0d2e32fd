"""Two multiplexers wired back to back: streams open, carry data both ways, half-close, and a stalled
reader holds back only its own stream."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel import errors, frames, mux, session


def pump(a: mux.Mux, b: mux.Mux) -> tuple[list[mux.Event], list[mux.Event]]:
    """Deliver every queued message both ways until both are quiet; return the events each side saw."""
    seen_a: list[mux.Event] = []
    seen_b: list[mux.Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return seen_a, seen_b
        for message in to_b:
            b.receive(message)
        for message in to_a:
            a.receive(message)
        seen_a += a.events_received()
        seen_b += b.events_received()


def connected() -> tuple[mux.Mux, mux.Mux, int]:
    server, agent = mux.Mux(dials_out=False), mux.Mux(dials_out=True)
    stream = server.open("127.0.0.1:10250")
    _, seen = pump(server, agent)
    assert seen == [mux.StreamOpened(stream, "127.0.0.1:10250")]
    agent.accept(stream)
    seen, _ = pump(server, agent)
    assert seen == [mux.StreamAccepted(stream)]
    return server, agent, stream


def received(events: list[mux.Event], stream: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, mux.DataReceived) and e.stream == stream)


def test_data_flows_both_ways_and_half_close_ends_one_direction() -> None:
    server, agent, s = connected()
    server.send(s, b"GET /containerLogs")
    server.close(s)
    _, seen = pump(server, agent)
    assert received(seen, s) == b"GET /containerLogs"
    assert seen[-1] == mux.StreamEnded(s)
    agent.send(s, b"log line\n")  # the other direction is still open
    agent.close(s)
    seen, _ = pump(server, agent)
    assert received(seen, s) == b"log line\n"
    assert server.streams == agent.streams == 0


def test_a_refused_open_reports_the_reason() -> None:
    server, agent = mux.Mux(dials_out=False), mux.Mux(dials_out=True)
    s = server.open("127.0.0.1:22")
    pump(server, agent)
    agent.refuse(s, "port 22 is not allowed")
    seen, _ = pump(server, agent)
    assert seen == [mux.StreamRefused(s, "port 22 is not allowed")]


def test_a_stalled_reader_holds_back_only_its_own_stream() -> None:
    server, agent = mux.Mux(dials_out=False), mux.Mux(dials_out=True)
    stalled, busy = server.open("a:1"), server.open("b:2")
    pump(server, agent)
    agent.accept(stalled)
    agent.accept(busy)
    pump(server, agent)
    payload = b"x" * (4 * mux.RECEIVE_WINDOW)
    agent.send(stalled, payload)
    agent.send(busy, payload)
    total = b""
    for _ in range(200):
        seen, _ = pump(server, agent)
        got = received(seen, busy)
        total += got
        server.consumed(busy, len(got))  # the busy reader keeps reading; the stalled one never does
        if len(total) == len(payload):
            break
    assert total == payload
    assert agent.buffered(stalled) == len(payload) - mux.RECEIVE_WINDOW  # parked at the sender, not on the wire


def test_overrunning_the_window_is_a_protocol_error() -> None:
    _server, agent, s = connected()
    evil = frames.Frame(frames.Kind.DATA, s, b"x" * frames.MAX_PAYLOAD).encode()
    with pytest.raises(errors.ProtocolError):
        for _ in range(mux.RECEIVE_WINDOW // frames.MAX_PAYLOAD + 1):
            agent.receive(evil)


def _in_flight_before_any_read(sender: mux.Mux, receiver: mux.Mux) -> int:
    """Open a stream from `sender` (the server side) to `receiver`, have the receiver send as much as it may,
    and count what the sender gets while it reads nothing."""
    stream = sender.open("a:1")
    pump(sender, receiver)
    receiver.accept(stream)
    pump(sender, receiver)
    receiver.send(stream, b"x" * (8 * mux.RECEIVE_WINDOW))
    seen, _ = pump(sender, receiver)
    return len(received(seen, stream))


def test_a_receiver_grants_its_larger_window_as_the_stream_starts() -> None:
    # A receiver with the default window lets a peer that starts from the protocol's initial window send it all.
    peer = mux.Mux(dials_out=True, window=frames.INITIAL_WINDOW)
    assert _in_flight_before_any_read(mux.Mux(dials_out=False), peer) == mux.RECEIVE_WINDOW
    # The other way round: an accepting receiver grants it after its ACCEPT.
    opener = mux.Mux(dials_out=False, window=frames.INITIAL_WINDOW)
    agent = mux.Mux(dials_out=True)
    stream = opener.open("a:1")
    pump(opener, agent)
    agent.accept(stream)
    pump(opener, agent)
    opener.send(stream, b"y" * (8 * mux.RECEIVE_WINDOW))
    _, seen = pump(opener, agent)
    assert len(received(seen, stream)) == mux.RECEIVE_WINDOW


def test_a_peer_that_grants_nothing_extra_gets_only_the_protocols_initial_window() -> None:
    # An older peer assumes the initial window and grants no more: sending past it would be its protocol error.
    older = mux.Mux(dials_out=False, window=frames.INITIAL_WINDOW)
    assert _in_flight_before_any_read(older, mux.Mux(dials_out=True)) == frames.INITIAL_WINDOW


def test_a_window_below_the_protocols_initial_one_is_a_usage_error() -> None:
    with pytest.raises(errors.UsageError):
        mux.Mux(dials_out=True, window=frames.INITIAL_WINDOW - 1)


def test_frames_for_streams_never_opened_are_protocol_errors_but_late_ones_are_ignored() -> None:
    server, agent, s = connected()
    with pytest.raises(errors.ProtocolError):
        agent.receive(frames.Frame(frames.Kind.DATA, 1001, b"x").encode())
    agent.reset(s, "gone")
    agent.receive(frames.Frame(frames.Kind.DATA, s, b"late").encode())  # crossed the RESET on the wire
    seen, _ = pump(server, agent)
    assert seen == [mux.StreamReset(s, "gone")]


def test_misuse_is_a_usage_error() -> None:
    server, _agent, s = connected()
    server.close(s)
    with pytest.raises(errors.UsageError):
        server.send(s, b"after close")
    with pytest.raises(errors.UsageError):
        server.send(99, b"unknown")


def test_a_ping_is_reported_and_answered_only_when_the_shell_says_so() -> None:
    """PINGs are not answered by the Mux itself: the session rate-limits them (a peer flooding PINGs must not
    queue one PONG per PING)."""
    server, agent = mux.Mux(dials_out=False), mux.Mux(dials_out=True)
    server.ping(b"t1")
    _, at_agent = pump(server, agent)
    assert at_agent == [mux.PingReceived(b"t1")] and agent.data_to_send() == []
    agent.pong(b"t1")
    seen, _ = pump(server, agent)
    assert seen == [mux.Pong(b"t1")]


def test_too_many_streams_are_refused_not_fatal() -> None:
    server, agent = mux.Mux(dials_out=False), mux.Mux(dials_out=True, max_streams=1)
    first, second = server.open("a:1"), server.open("a:2")
    seen, _ = pump(server, agent)
    assert seen == [mux.StreamRefused(second, "too many streams on this tunnel")]
    assert agent.events_received() == []
    assert first != second


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.integers(0, 2), st.binary(min_size=1, max_size=40_000)), max_size=25),
    read_every=st.integers(1, 4),
)
def test_every_byte_arrives_in_order_on_its_own_stream(chunks: list[tuple[int, bytes]], read_every: int) -> None:
    server, agent = mux.Mux(dials_out=False), mux.Mux(dials_out=True)
    streams = [server.open(f"h:{i}") for i in range(3)]
    pump(server, agent)
    for s in streams:
        agent.accept(s)
    pump(server, agent)
    sent = {s: b"" for s in streams}
    got = {s: b"" for s in streams}
    unread = dict.fromkeys(streams, 0)

    def deliver(seen: list[mux.Event]) -> None:
        for s in streams:
            piece = received(seen, s)
            got[s] += piece
            unread[s] += len(piece)

    def read_all() -> None:
        for s in streams:
            agent.consumed(s, unread[s])
            unread[s] = 0

    for n, (index, data) in enumerate(chunks):
        server.send(streams[index], data)
        sent[streams[index]] += data
        deliver(pump(server, agent)[1])
        if n % read_every == 0:
            read_all()
    for _ in range(1000):
        if all(server.buffered(s) == 0 for s in streams):
            break
        read_all()
        deliver(pump(server, agent)[1])
    assert got == sent


def test_the_ping_budget_allows_its_rate_and_burst_and_no_more() -> None:
    budget = session.Budget(rate=10, burst=10, now=0.0)
    assert [budget.take(0.0) for _ in range(11)] == [True] * 10 + [False]
    assert budget.take(0.1) and not budget.take(0.1)  # a tenth of a second refills one
    assert [budget.take(100.0) for _ in range(11)].count(True) == 10  # never more than the burst in hand


def test_one_large_send_goes_out_in_frames_up_to_the_window_and_the_rest_waits() -> None:
    server, agent, s = connected()
    data = bytes(range(251)) * (3 * mux.RECEIVE_WINDOW // 251 + 1)  # three windows and a bit, one call
    server.send(s, data)
    messages = server.data_to_send()
    assert all(len(m) <= frames.MAX_PAYLOAD + 5 for m in messages)
    assert sum(len(m) - 5 for m in messages) == mux.RECEIVE_WINDOW  # exactly the window, not a byte more
    assert server.buffered(s) == len(data) - mux.RECEIVE_WINDOW
    got = b""
    for m in messages:
        agent.receive(m)
    for _ in range(100):
        piece = received(agent.events_received(), s)
        got += piece
        agent.consumed(s, len(piece))
        seen_by_agent = pump(server, agent)[1]
        got += received(seen_by_agent, s)
        agent.consumed(s, len(received(seen_by_agent, s)))
        if len(got) == len(data):
            break
    assert got == data
    assert server.buffered(s) == 0


def test_only_streams_whose_window_grew_are_reported_widened() -> None:
    server, agent, s = connected()
    assert s in server.widened()  # its ACCEPT and the window the agent granted on top
    other = server.open("127.0.0.1:10255")
    pump(server, agent)
    agent.accept(other)
    pump(server, agent)
    assert set(server.widened()) == {other}
    assert server.widened() == []
    server.send(s, b"x" * mux.RECEIVE_WINDOW)
    agent_seen = pump(server, agent)[1]
    agent.consumed(s, len(received(agent_seen, s)))
    pump(server, agent)
    assert server.widened() == [s]  # the WINDOW the reader granted; `other` saw nothing
