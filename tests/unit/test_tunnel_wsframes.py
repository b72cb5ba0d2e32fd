"""The websocket frames the tunnel session writes itself (`session.websocket_frames`), read back by websockets'
own protocol on the other side: what a real peer parses, at every length encoding, masked from the agent and
unmasked from the server."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from tunnel import frames, session

MESSAGES = [
    frames.Frame(frames.Kind.ACCEPT, 3).encode(),  # 5 bytes: 7-bit length
    frames.encode_data(3, b"x" * 120),  # 125 bytes: the longest 7-bit length
    frames.encode_data(3, b"y" * 121),  # 126 bytes: the shortest 16-bit length
    frames.encode_data(3, bytes(range(256)) * 256),  # a full DATA frame, 65,541 bytes: 64-bit length
]


def _received_by(side: Side, wire: bytes) -> list[Frame]:
    peer = Protocol(side, state=State.OPEN, max_size=session.MAX_MESSAGE)
    peer.receive_data(wire)
    events = peer.events_received()
    assert peer.state is State.OPEN, peer.close_exc
    assert all(isinstance(event, Frame) for event in events)
    return [event for event in events if isinstance(event, Frame)]


@pytest.mark.parametrize(("masked", "reader"), [(True, Side.SERVER), (False, Side.CLIENT)])
def test_frames_the_session_writes_are_what_websockets_reads(masked: bool, reader: Side) -> None:
    wire = session.websocket_frames(MESSAGES, mask=session.Masks() if masked else None)
    got = _received_by(reader, wire)
    assert [(f.opcode, f.fin, f.data) for f in got] == [(Opcode.BINARY, True, m) for m in MESSAGES]


def test_the_agent_masks_every_frame_and_the_server_none() -> None:
    # websockets refuses unmasked frames from a client and masked ones from a server ("incorrect masking")
    unmasked = session.websocket_frames(MESSAGES[:1], mask=None)
    server_side = Protocol(Side.SERVER, state=State.OPEN)
    server_side.receive_data(unmasked)
    assert server_side.state is State.CLOSING

    masked = session.websocket_frames(MESSAGES[:1], mask=session.Masks())
    client_side = Protocol(Side.CLIENT, state=State.OPEN)
    client_side.receive_data(masked)
    assert client_side.state is State.CLOSING


def test_each_frame_gets_its_own_masking_key() -> None:
    masks = session.Masks()
    keys = [masks.take() for _ in range(1000)]  # across a refill of the pool
    assert all(len(key) == 4 for key in keys)
    assert len(set(keys)) > 990  # 4 random bytes: a few repeats in 1,000 are possible, reuse is not


def test_a_payload_is_masked_on_the_wire() -> None:
    payload = frames.encode_data(5, b"secret-bytes" * 10)
    wire = session.websocket_frames([payload], mask=session.Masks())
    assert b"secret-bytes" not in wire
    assert _received_by(Side.SERVER, wire)[0].data == payload
