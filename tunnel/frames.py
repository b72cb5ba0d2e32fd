"""The tunnel's frames: one per websocket message, `type (1 byte) | stream id (4 bytes, big endian) | payload`.

Pure: no I/O. Payloads are bounded (`MAX_PAYLOAD`), so a peer can never make us buffer an unbounded frame.

| type | payload | meaning |
|---|---|---|
| OPEN | target as UTF-8 `host:port` | open a stream to target (sender's receive window starts at `INITIAL_WINDOW`) |
| ACCEPT | empty | the target was dialled; the stream carries data |
| REFUSE | reason, UTF-8 | the target could not be dialled or is not allowed; the stream is gone |
| DATA | bytes | stream data, counted against the receiver's window |
| WINDOW | increment, 4 bytes big endian | the receiver consumed data: the sender may send that much more |
| FIN | empty | the sender will send no more data on this stream (half-close) |
| RESET | reason, UTF-8 | the stream is aborted in both directions |
| PING, PONG | opaque, up to 8 bytes; stream 0 | keepalive |
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from tunnel import errors

MAX_PAYLOAD = 64 * 1024
INITIAL_WINDOW = 256 * 1024
MAX_TARGET = 261  # host (253) + ":" + port (5) + brackets for IPv6
_HEADER = struct.Struct(">BI")


class Kind(enum.IntEnum):
    OPEN = 1
    ACCEPT = 2
    REFUSE = 3
    DATA = 4
    WINDOW = 5
    FIN = 6
    RESET = 7
    PING = 8
    PONG = 9


@dataclasses.dataclass(frozen=True)
class Frame:
    kind: Kind
    stream: int
    payload: bytes = b""

    def encode(self) -> bytes:
        if len(self.payload) > MAX_PAYLOAD:
            raise errors.UsageError(f"frame payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")
        if not 0 <= self.stream < 2**32:
            raise errors.UsageError(f"stream id {self.stream} out of range")
        return _HEADER.pack(self.kind, self.stream) + self.payload


def encode_data(stream: int, chunk: bytes | bytearray | memoryview) -> bytes:
    """A DATA frame for `chunk` (at most `MAX_PAYLOAD` bytes), copied once: the hot path's `Frame(...).encode()`
    without the intermediate payload copy a slice of a buffer would need."""
    if len(chunk) > MAX_PAYLOAD:
        raise errors.UsageError(f"frame payload of {len(chunk)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(Kind.DATA, stream) + chunk


def decode(message: bytes) -> Frame:
    """One frame from one websocket message; `errors.ProtocolError` for anything malformed."""
    if len(message) < _HEADER.size:
        raise errors.ProtocolError(f"frame of {len(message)} bytes is shorter than its header")
    kind_value, stream = _HEADER.unpack_from(message)
    try:
        kind = Kind(kind_value)
    except ValueError:
        raise errors.ProtocolError(f"unknown frame type {kind_value}") from None
    payload = message[_HEADER.size :]
    if len(payload) > MAX_PAYLOAD:
        raise errors.ProtocolError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if kind in (Kind.PING, Kind.PONG):
        if stream != 0 or len(payload) > 8:
            raise errors.ProtocolError("keepalive frames belong to stream 0 and carry at most 8 bytes")
    elif stream == 0:
        raise errors.ProtocolError(f"{kind.name} on stream 0")
    if kind is Kind.WINDOW and len(payload) != 4:
        raise errors.ProtocolError("WINDOW carries exactly a 4-byte increment")
    if kind in (Kind.ACCEPT, Kind.FIN) and payload:
        raise errors.ProtocolError(f"{kind.name} carries no payload")
    if kind is Kind.OPEN and not 0 < len(payload) <= MAX_TARGET:
        raise errors.ProtocolError("OPEN needs a target of 1 to 261 bytes")
    if kind in (Kind.OPEN, Kind.REFUSE, Kind.RESET):
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.ProtocolError(f"{kind.name} payload is not UTF-8") from None
    return Frame(kind, stream, payload)


def window(stream: int, increment: int) -> Frame:
    return Frame(Kind.WINDOW, stream, struct.pack(">I", increment))


def increment_of(frame: Frame) -> int:
    value: int = struct.unpack(">I", frame.payload)[0]
    return value
