"""Tunnel frames at the byte level, and what a malformed one gets: a ProtocolError, never a crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel import errors, frames
from tunnel.frames import Frame, Kind


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (Frame(Kind.OPEN, 2, b"127.0.0.1:10250"), b"\x01\x00\x00\x00\x02127.0.0.1:10250"),
        (Frame(Kind.ACCEPT, 2), b"\x02\x00\x00\x00\x02"),
        (Frame(Kind.DATA, 7, b"hi"), b"\x04\x00\x00\x00\x07hi"),
        (frames.window(7, 65536), b"\x05\x00\x00\x00\x07\x00\x01\x00\x00"),
        (Frame(Kind.FIN, 2**32 - 1), b"\x06\xff\xff\xff\xff"),
        (Frame(Kind.PING, 0, b"12345678"), b"\x08\x00\x00\x00\x0012345678"),
    ],
)
def test_frames_encode_and_decode_as_documented(frame: Frame, wire: bytes) -> None:
    assert frame.encode() == wire
    assert frames.decode(wire) == frame


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x04\x00\x00",  # short header
        b"\x63\x00\x00\x00\x01",  # unknown type
        b"\x04\x00\x00\x00\x00data",  # data on stream 0
        b"\x08\x00\x00\x00\x01",  # ping off stream 0
        b"\x05\x00\x00\x00\x01\x00\x01",  # short window increment
        b"\x02\x00\x00\x00\x01x",  # ACCEPT with a payload
        b"\x01\x00\x00\x00\x01",  # OPEN without a target
        b"\x01\x00\x00\x00\x01\xff\xfe",  # target not UTF-8
        b"\x04\x00\x00\x00\x01" + b"x" * (frames.MAX_PAYLOAD + 1),  # oversized
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(errors.ProtocolError):
        frames.decode(wire)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(errors.ProtocolError):
        frames.decode(data)


def test_encoding_an_oversized_frame_is_our_bug_not_the_peers() -> None:
    with pytest.raises(errors.UsageError):
        Frame(Kind.DATA, 1, b"x" * (frames.MAX_PAYLOAD + 1)).encode()
