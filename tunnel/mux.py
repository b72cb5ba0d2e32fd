"""Many TCP streams over one tunnel connection, each with its own flow-control window. Sans-I/O.

Bytes in (`receive`), events and bytes out (`events_received`, `data_to_send`); the asyncio shells around it
own the websocket and the sockets. Each stream's sender may have at most the receiver's window in flight;
the receiver grants more only as its application consumes (`consumed`). A stream whose reader stalls (a
paused `kubectl logs -f`) therefore stops at its window, its data waits in the sender's per-stream buffer
(`buffered` tells the shell to stop reading that stream's source), and every other stream keeps flowing:
no head-of-line blocking. Half-close (FIN) ends one direction only.

The side that dials out (the agent) opens odd stream ids, the other side even ones, so both may open.

Windows: the protocol starts every stream's window at `frames.INITIAL_WINDOW` in both directions. A receiver
that wants more in flight (`window`, default `RECEIVE_WINDOW`) grants the difference with one WINDOW frame as
the stream starts (after its OPEN, or after its ACCEPT), so a peer that grants nothing extra (an older one)
still gets exactly the window it expects. One stream then holds at most `window` bytes at its receiver.
"""

from __future__ import annotations

import dataclasses
import enum

from tunnel import errors, frames
from tunnel.frames import Frame, Kind

MAX_WINDOW = 2**31 - 1
RECEIVE_WINDOW = 1024 * 1024
"""Bytes this side lets each stream's sender have in flight. bench/tunnel_bench.py measured one stream at about
1.4 times the throughput of a 256 KiB window: the three processes of the path (agent, server, reader) take turns
on the cores, and a window that outlasts a turn keeps the others busy."""


class State(enum.Enum):
    OPENING = "opening"  # we sent OPEN, waiting for ACCEPT
    INCOMING = "incoming"  # the peer sent OPEN, waiting for our accept/refuse
    OPEN = "open"


@dataclasses.dataclass(frozen=True)
class StreamOpened:
    stream: int
    target: str


@dataclasses.dataclass(frozen=True)
class StreamAccepted:
    stream: int


@dataclasses.dataclass(frozen=True)
class StreamRefused:
    stream: int
    reason: str


@dataclasses.dataclass(frozen=True)
class DataReceived:
    stream: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class StreamEnded:
    """The peer half-closed: no more data will come on this stream."""

    stream: int


@dataclasses.dataclass(frozen=True)
class StreamReset:
    stream: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Pong:
    payload: bytes


@dataclasses.dataclass(frozen=True)
class PingReceived:
    """The peer asked for a PONG; the shell answers it (`pong`) or not, as its rate limit says."""

    payload: bytes


Event = StreamOpened | StreamAccepted | StreamRefused | DataReceived | StreamEnded | StreamReset | Pong | PingReceived


@dataclasses.dataclass
class _Stream:
    id: int
    state: State
    send_window: int = frames.INITIAL_WINDOW
    recv_window: int = frames.INITIAL_WINDOW
    unacked: int = 0
    pending: bytearray = dataclasses.field(default_factory=bytearray)
    fin_queued: bool = False
    fin_sent: bool = False
    fin_received: bool = False


class Mux:
    def __init__(self, *, dials_out: bool, max_streams: int = 1024, window: int = RECEIVE_WINDOW) -> None:
        if not frames.INITIAL_WINDOW <= window <= MAX_WINDOW:
            raise errors.UsageError(f"a receive window must be {frames.INITIAL_WINDOW} to {MAX_WINDOW} bytes")
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if dials_out else 2
        self._peer_parity = 0 if dials_out else 1
        self._highest_peer = 0
        self._max_streams = max_streams
        self._window = window
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._widened: list[int] = []

    # --- what the shell reads -------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def widened(self) -> list[int]:
        """Streams whose send window grew (WINDOW, ACCEPT) since the last call: only their buffers can have
        drained, so only their paused writers need a look."""
        widened, self._widened = self._widened, []
        return widened

    def buffered(self, stream: int) -> int:
        """Bytes of `stream` waiting for the peer's window; the shell pauses the source above a bound."""
        s = self._streams.get(stream)
        return len(s.pending) if s else 0

    def is_open(self, stream: int) -> bool:
        """The stream still exists here (not refused, reset, or closed in both directions)."""
        return stream in self._streams

    @property
    def streams(self) -> int:
        return len(self._streams)

    # --- what the application does ---------------------------------------------------------------

    def open(self, target: str) -> int:
        encoded = target.encode()
        if not 0 < len(encoded) <= frames.MAX_TARGET:
            raise errors.UsageError(f"target {target!r} is not 1 to {frames.MAX_TARGET} bytes")
        stream, self._next_id = self._next_id, self._next_id + 2
        s = self._streams[stream] = _Stream(stream, State.OPENING)
        self._emit(Frame(Kind.OPEN, stream, encoded))
        self._grant_extra(s)
        return stream

    def accept(self, stream: int) -> None:
        s = self._get(stream, State.INCOMING)
        s.state = State.OPEN
        self._emit(Frame(Kind.ACCEPT, stream))
        self._grant_extra(s)
        self._flush(s)

    def refuse(self, stream: int, reason: str) -> None:
        self._get(stream, State.INCOMING)
        del self._streams[stream]
        self._emit(Frame(Kind.REFUSE, stream, reason.encode()[: frames.MAX_PAYLOAD]))

    def send(self, stream: int, data: bytes) -> None:
        s = self._get(stream)
        if s.fin_queued:
            raise errors.UsageError(f"stream {stream} was closed for sending")
        if not data:
            return
        if s.pending or s.state is not State.OPEN:
            s.pending += data
            self._flush(s)
            return
        # the common case: straight out in frames, each copied once from `data`; only what the window does not
        # allow yet goes through the buffer
        view = memoryview(data)
        sent = 0
        while sent < len(view) and s.send_window > 0:
            size = min(len(view) - sent, s.send_window, frames.MAX_PAYLOAD)
            self._out.append(frames.encode_data(stream, view[sent : sent + size]))
            s.send_window -= size
            sent += size
        if sent < len(view):
            s.pending += view[sent:]
        view.release()

    def consumed(self, stream: int, count: int) -> None:
        """The application took `count` bytes of this stream's data: grant the peer that much again."""
        s = self._streams.get(stream)
        if s is None:
            return
        s.unacked += count
        if s.unacked >= self._window // 4:
            s.recv_window += s.unacked
            self._emit(frames.window(stream, s.unacked))
            s.unacked = 0

    def close(self, stream: int) -> None:
        """Half-close: send FIN once everything already given to `send` is out."""
        s = self._get(stream)
        s.fin_queued = True
        self._flush(s)

    def reset(self, stream: int, reason: str) -> None:
        if self._streams.pop(stream, None) is not None:
            self._emit(Frame(Kind.RESET, stream, reason.encode()[: frames.MAX_PAYLOAD]))

    def ping(self, payload: bytes = b"") -> None:
        self._emit(Frame(Kind.PING, 0, payload))

    def pong(self, payload: bytes) -> None:
        self._emit(Frame(Kind.PONG, 0, payload))

    # --- what the peer sent ----------------------------------------------------------------------

    def receive(self, message: bytes) -> None:
        frame = frames.decode(message)
        kind, stream = frame.kind, frame.stream
        if kind is Kind.PING:
            self._events.append(PingReceived(frame.payload))
            return
        if kind is Kind.PONG:
            self._events.append(Pong(frame.payload))
            return
        if kind is Kind.OPEN:
            self._peer_open(stream, frame.payload.decode())
            return
        s = self._streams.get(stream)
        if s is None:
            if not self._existed(stream):
                raise errors.ProtocolError(f"{kind.name} for stream {stream}, which was never opened")
            return  # a frame that crossed our RESET or REFUSE on the wire
        if kind is Kind.ACCEPT:
            if s.state is not State.OPENING:
                raise errors.ProtocolError(f"ACCEPT for stream {stream} in state {s.state.value}")
            s.state = State.OPEN
            self._events.append(StreamAccepted(stream))
            self._flush(s)
            self._widened.append(stream)
        elif kind is Kind.REFUSE:
            if s.state is not State.OPENING:
                raise errors.ProtocolError(f"REFUSE for stream {stream} in state {s.state.value}")
            del self._streams[stream]
            self._events.append(StreamRefused(stream, frame.payload.decode()))
        elif kind is Kind.DATA:
            self._data(s, frame.payload)
        elif kind is Kind.WINDOW:
            s.send_window += frames.increment_of(frame)
            if s.send_window > MAX_WINDOW:
                raise errors.ProtocolError(f"window of stream {stream} grew past {MAX_WINDOW}")
            self._flush(s)
            self._widened.append(stream)
        elif kind is Kind.FIN:
            if s.fin_received:
                raise errors.ProtocolError(f"second FIN on stream {stream}")
            s.fin_received = True
            self._events.append(StreamEnded(stream))
            self._retire_if_done(s)
        elif kind is Kind.RESET:
            del self._streams[stream]
            self._events.append(StreamReset(stream, frame.payload.decode()))

    def _peer_open(self, stream: int, target: str) -> None:
        if stream % 2 != self._peer_parity or stream <= self._highest_peer:
            raise errors.ProtocolError(f"OPEN with stream id {stream} out of sequence")
        self._highest_peer = stream
        if len(self._streams) >= self._max_streams:
            self._emit(Frame(Kind.REFUSE, stream, b"too many streams on this tunnel"))
            return
        self._streams[stream] = _Stream(stream, State.INCOMING)
        self._events.append(StreamOpened(stream, target))

    def _data(self, s: _Stream, data: bytes) -> None:
        if s.state is not State.OPEN:
            raise errors.ProtocolError(f"DATA on stream {s.id} before it was accepted")
        if s.fin_received:
            raise errors.ProtocolError(f"DATA on stream {s.id} after its FIN")
        if len(data) > s.recv_window:
            raise errors.ProtocolError(f"stream {s.id} overran its window ({len(data)} > {s.recv_window} bytes)")
        s.recv_window -= len(data)
        if data:
            self._events.append(DataReceived(s.id, data))

    # --- internals ------------------------------------------------------------------------------

    def _existed(self, stream: int) -> bool:
        if stream % 2 == self._peer_parity:
            return stream <= self._highest_peer
        return stream < self._next_id

    def _get(self, stream: int, state: State | None = None) -> _Stream:
        s = self._streams.get(stream)
        if s is None:
            raise errors.UsageError(f"stream {stream} is not open")
        if state is not None and s.state is not state:
            raise errors.UsageError(f"stream {stream} is {s.state.value}, not {state.value}")
        return s

    def _flush(self, s: _Stream) -> None:
        if s.state is not State.OPEN:
            return
        while s.pending and s.send_window > 0:
            size = min(len(s.pending), s.send_window, frames.MAX_PAYLOAD)
            with memoryview(s.pending) as view:
                self._out.append(frames.encode_data(s.id, view[:size]))
            del s.pending[:size]
            s.send_window -= size
        if s.fin_queued and not s.pending and not s.fin_sent:
            s.fin_sent = True
            self._emit(Frame(Kind.FIN, s.id))
            self._retire_if_done(s)

    def _grant_extra(self, s: _Stream) -> None:
        """Raise the peer's window for `s` from the protocol's initial one to ours."""
        extra = self._window - frames.INITIAL_WINDOW
        if extra > 0:
            s.recv_window += extra
            self._emit(frames.window(s.id, extra))

    def _retire_if_done(self, s: _Stream) -> None:
        if s.fin_sent and s.fin_received:
            self._streams.pop(s.id, None)

    def _emit(self, frame: Frame) -> None:
        self._out.append(frame.encode())
