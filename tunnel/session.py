"""One tunnel connection: the multiplexer driven over a websocket. The asyncio shell shared by server and agent.

Ownership: one reader task feeds every received message to the `Mux` and hands events to streams. What the
`Mux` emits is written at once, as complete websocket frames in one transport write (`_send_now`), while
nothing waits in the queue and the transport is under its high-water mark (`WRITE_LIMIT`); otherwise it is
queued, in order, for a writer task started the first time that happens. Both run on the event loop and write
whole frames, so frames are never interleaved and the Mux is only used from the event loop.

Backpressure is per stream. A reader that does not read (`Stream.read`) does not grant window, so its
sender's data stays in that sender's per-stream buffer; `Stream.write` waits while that buffer is above
`HIGH_WATER`, which stops the sender reading its own socket. Every other stream keeps flowing. A stream
spliced to a socket (`splice`) hands arriving data straight to that socket while the socket's write buffer is
under `SINK_HIGH_WATER`, and counts it as read; a socket that does not drain stops that, and the window closes
as before. Memory per stream is bounded by the window plus `HIGH_WATER` plus `SINK_HIGH_WATER`.

Control frames are bounded per connection too. Many are answers to what the peer sent (a PONG per PING, a
REFUSE per refused OPEN), so a peer that sends without reading would make them pile up. PINGs are answered
at most `pings_per_s` a second (a token bucket); a peer that keeps sending PINGs past that by more than
`FLOOD_EXCESS` is closed (1008). When more than `max_queued_bytes` of control frames wait to be sent, the
reader stops reading from the peer until the queue is down to half; a peer that has not read them within
`stall_s` is closed (1008). Stream data is not counted: flow-control windows bound it, and pausing the reader
for it could deadlock two busy ends.

When the connection ends, every stream of it ends with it (`ConnectionResetError` to readers and writers,
`DialFailed` to opens still waiting).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tunnel import errors, frames, mux

try:
    from websockets.speedups import apply_mask  # websockets' C masking, in its wheels
except ImportError:  # a websockets built without its C extension
    from websockets.utils import apply_mask

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
"""Bytes a stream may have waiting for the peer's window before its writer is paused."""
READ_SIZE = 4 * frames.MAX_PAYLOAD
"""Most bytes a splice takes from its socket at once: what is there (up to the stream reader's buffer) goes out
as several DATA frames in one write to the tunnel, not one frame per turn of the event loop."""
SINK_HIGH_WATER = 64 * 1024
"""Bytes a stream's socket may have in its transport's write buffer for data to be written there directly on
arrival (asyncio's own high-water mark for a stream writer); above it, data waits for the reading task."""
MAX_MESSAGE = frames.MAX_PAYLOAD + 64
"""Largest websocket message either side accepts: one frame."""
WRITE_LIMIT = 512 * 1024
"""websockets' high-water mark for a connection's transport write buffer. Its default (32 KiB) is half of one
DATA frame, so every frame sent while the socket is busy paused the writer until the buffer fell under 8 KiB:
the sender then waited on the receiver's every read. Bounded all the same, and nothing is buffered when idle."""
MAX_QUEUED_BYTES = 1024 * 1024
"""Default bound on control frames waiting to be sent to one peer."""
PINGS_PER_S = 10.0
"""Default rate at which a peer's PINGs are answered."""
FLOOD_EXCESS = 1000
"""PINGs past the rate (net of what the rate refills) after which the peer is closed as flooding."""
_DATA = int(frames.Kind.DATA)
_NO_FRAMES: collections.deque[bytes] = collections.deque(maxlen=0)
_WS_SHORT = struct.Struct("!BB")
_WS_MEDIUM = struct.Struct("!BBH")
_WS_LONG = struct.Struct("!BBQ")


class Masks:
    """Masking keys for the frames a websocket client sends (RFC 6455 5.3: a fresh, unpredictable key per
    frame), drawn from the system's random source a few hundred at a time instead of one call per frame."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(1024), 0
        key = self._pool[self._at : self._at + 4]
        self._at += 4
        return key


def websocket_frames(messages: list[bytes], *, mask: Masks | None) -> bytes:
    """RFC 6455 frames, one unfragmented binary message each (FIN set, opcode 2, no extension bits: the
    connections are made without compression), masked with a fresh key each when `mask` is given (a client)."""
    parts: list[bytes] = []
    for message in messages:
        length = len(message)
        bit = 0x80 if mask is not None else 0
        if length < 126:
            parts.append(_WS_SHORT.pack(0x82, bit | length))
        elif length < 65536:
            parts.append(_WS_MEDIUM.pack(0x82, bit | 126, length))
        else:
            parts.append(_WS_LONG.pack(0x82, bit | 127, length))
        if mask is not None:
            key = mask.take()
            parts.append(key)
            parts.append(apply_mask(message, key))
        else:
            parts.append(message)
    return b"".join(parts)


class Budget:
    """A token bucket: `take(now)` is True while the rate (with `burst` in hand) allows. Pure."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Flooding(Exception):
    """The peer sends more than it is allowed to, or does not read what it asked for."""


class Stream:
    """One end of one tunnelled TCP connection, with the read/write/half-close surface of a socket."""

    def __init__(self, session: Session, stream_id: int, target: str) -> None:
        self.session = session
        self.id = stream_id
        self.target = target
        self._chunks: collections.deque[bytes] = collections.deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._error: str | None = None
        self._unacked = 0
        self._sink: asyncio.StreamWriter | None = None

    async def read(self) -> bytes:
        """The next chunk; b"" once the peer half-closed. Reading is what grants the peer more window,
        and the chunk returned last time is acknowledged only now, after the caller has dealt with it."""
        if self._unacked:
            self.session.consumed(self.id, self._unacked)
            self._unacked = 0
        while not self._chunks and not self._eof and self._error is None:
            self._readable.clear()
            await self._readable.wait()
        if self._chunks:
            data = self._chunks.popleft()
            self._unacked = len(data)
            return data
        if self._error is not None:
            raise ConnectionResetError(self._error)
        return b""

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise ConnectionResetError(self._error)
        self.session.send(self.id, data)
        while self.session.mux.buffered(self.id) > HIGH_WATER and self._error is None:
            self._writable.clear()
            await self._writable.wait()
        if self._error is not None:
            raise ConnectionResetError(self._error)

    def write_eof(self) -> None:
        """Half-close: the peer reads b"" once everything written so far has arrived."""
        if self._error is None:
            self.session.close_stream(self.id)

    def reset(self, reason: str) -> None:
        """Abort both directions."""
        if self._error is None:
            self.session.reset_stream(self.id, reason)
            self._fail(reason)

    # --- fed by the session ------------------------------------------------------------------------

    def deliver_to(self, writer: asyncio.StreamWriter) -> None:
        """Let data that arrives while nothing is queued go straight into `writer`'s transport (see `_feed`)."""
        self._sink = writer

    def _feed(self, data: bytes) -> None:
        """Data from the peer. With a sink (`deliver_to`), nothing queued before it and the sink's transport
        below `SINK_HIGH_WATER`, the data is written there at once and acknowledged as consumed: one event-loop
        turn less on every hop (the reading task is not woken). Otherwise it is queued for `read`, which
        acknowledges it only once the caller dealt with it. Either way the window plus the sink's bounded
        buffer bound what one stream holds, and a sink that does not drain stops the direct path, so its
        window closes as before."""
        sink = self._sink
        if (
            sink is not None
            and not self._chunks
            and not self._eof
            and not sink.transport.is_closing()
            and sink.transport.get_write_buffer_size() <= SINK_HIGH_WATER
        ):
            sink.write(data)
            self.session.consumed(self.id, len(data))
            return
        self._chunks.append(data)
        self._readable.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._readable.set()
        self._writable.set()
        self.session.forget(self.id)

    def _wake_writer(self) -> None:
        if not self._writable.is_set() and self.session.mux.buffered(self.id) <= HIGH_WATER // 2:
            self._writable.set()

    @property
    def done(self) -> bool:
        return self._error is not None


OnOpen = Callable[["Stream"], Coroutine[Any, Any, None]]
"""What the accepting side runs for a stream the peer opened; it must `accept` or `refuse` it."""


class Session:
    def __init__(
        self,
        ws: Connection,
        *,
        dials_out: bool,
        name: str,
        on_open: OnOpen | None = None,
        max_streams: int = 1024,
        window: int = mux.RECEIVE_WINDOW,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        pings_per_s: float = PINGS_PER_S,
        stall_s: float = 15.0,
    ) -> None:
        self.ws = ws
        self.name = name
        self.mux = mux.Mux(dials_out=dials_out, max_streams=max_streams, window=window)
        self._masks = Masks() if dials_out else None
        """Frames from the side that dials out (the websocket client) are masked, as RFC 6455 requires."""
        self.max_queued_bytes = max_queued_bytes
        self._stall_s = stall_s
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self.last_heard = now
        """Event-loop time of the last message from the peer (`ping` asks for one)."""
        self._pings = Budget(pings_per_s, max(pings_per_s, 1.0), now)
        self._excess = Budget(pings_per_s, FLOOD_EXCESS, now)
        self._control_queued = 0
        self._drained: asyncio.Event | None = None
        self.pings_unanswered = 0
        self._on_open = on_open
        self._streams: dict[int, Stream] = {}
        self._opening: dict[int, asyncio.Future[None]] = {}
        self._out: collections.deque[bytes] = _NO_FRAMES
        """Frames waiting for the writer task; an empty deque shared by every session until one has to wait."""
        self._out_ready: asyncio.Event | None = None
        self._writer_task: asyncio.Task[None] | None = None
        """Started the first time a frame has to wait (`_queue`): most connections, idle ones above all, never
        need it, since frames go straight out while the transport keeps up (`_send_now`)."""
        self._handlers: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self._closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.streams_opened = 0

    # --- lifetime ---------------------------------------------------------------------------------

    async def run(self) -> str:
        """Serve the connection until it ends; returns why it ended. Streams end with it."""
        reason = "tunnel connection lost"
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                if self._out:
                    self._start_writer()
                reason = await self._reader()
                self._closed = True
                if self._writer_task is not None:
                    self._writer_task.cancel()
                for task in list(self._handlers):
                    task.cancel()
        finally:
            self._closed = True
            self._group = None
            self._end_all(f"tunnel connection lost ({reason})")
        return reason

    async def _reader(self) -> str:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    return await self._protocol_error("text message on a binary tunnel")
                self.last_heard = self._loop.time()
                try:
                    self.mux.receive(message)
                    self._dispatch()
                    if self._control_queued > self.max_queued_bytes:
                        await self._wait_for_peer_to_read()
                except errors.ProtocolError as exc:
                    return await self._protocol_error(str(exc))
                except Flooding as exc:
                    return await self._flooding(str(exc))
            return "closed by peer"
        except ConnectionClosed as exc:
            return f"connection lost: {exc}"

    async def _wait_for_peer_to_read(self) -> None:
        """Backpressure: read nothing more from a peer until it has read our answers."""
        self._drained = drained = self._drained or asyncio.Event()
        drained.clear()
        try:
            async with asyncio.timeout(self._stall_s):
                await drained.wait()
        except TimeoutError:
            raise Flooding(
                f"the peer has not read {self._control_queued} queued bytes of answers within {self._stall_s:g}s"
            ) from None

    async def _flooding(self, reason: str) -> str:
        log.warning("tunnel peer floods, closing peer=%s reason=%s", self.name, reason)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(1.0):  # it may not read: do not wait on it for a close handshake
                await self.ws.close(1008, f"flooding: {reason}"[:120])
        self.ws.transport.abort()
        return f"flooding: {reason}"

    async def _protocol_error(self, reason: str) -> str:
        log.warning("tunnel peer broke the protocol, closing peer=%s reason=%s", self.name, reason)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(1002, reason[:120])
        return f"protocol error: {reason}"

    def _start_writer(self) -> None:
        if self._writer_task is None and self._group is not None and not self._closed:
            self._out_ready = ready = self._out_ready or asyncio.Event()
            ready.set()
            self._writer_task = self._group.create_task(self._writer(ready), name=f"tunnel-writer-{self.name}")

    async def _writer(self, ready: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader sees the close and ends the session
            while True:
                await ready.wait()
                ready.clear()
                while self._out:
                    message = self._out.popleft()
                    await self.ws.send(message)
                    if message[0] != _DATA:
                        self._control_queued -= len(message)
                        if self._control_queued <= self.max_queued_bytes // 2 and self._drained is not None:
                            self._drained.set()

    def _flush(self) -> None:
        out = self.mux.data_to_send()
        if not out:
            return
        if not self._out and not self.ws.paused and self.ws.protocol.state is State.OPEN:
            self._send_now(out)
            return
        for message in out:
            if message[0] != _DATA:
                self._control_queued += len(message)
        if self._out is _NO_FRAMES:
            self._out = collections.deque()
        self._out.extend(out)
        if self._out_ready is not None:
            self._out_ready.set()
        else:
            self._start_writer()

    def _send_now(self, out: list[bytes]) -> None:
        """Frames straight into the transport, when nothing waits in the writer's queue (so order holds) and the
        transport is below its high-water mark (so the write buffer stays bounded by websockets' `write_limit`).
        This is the common case; it spares each frame a hop through the writer task and the per-send context
        of `Connection.send`, one turn of the event loop on every tunnel hop. The websocket frames are built
        here (`websocket_frames`), all of them in one write: websockets' own framing copied each payload three
        to four times through `Frame` objects and a `BytesIO`, the profile's largest share of the agent's time
        after the socket calls. Only complete binary messages are written this way, only while the websocket
        is open, and websockets' own frames (pings, pongs, close) are written whole by it, so the byte stream
        stays a valid sequence of frames. A failure is handled as `Connection.send` handles it: the connection
        is aborted and the reader ends the session."""
        try:
            self.ws.transport.write(websocket_frames(out, mask=self._masks))
        except Exception as exc:  # what websockets' own send does with any write failure
            log.debug("tunnel write failed peer=%s error=%r", self.name, exc)
            self.ws.set_connection_exc(exc)
            self.ws.transport.abort()

    @property
    def queued_bytes(self) -> int:
        """Control frames waiting to be sent to the peer (bounded by about `max_queued_bytes`)."""
        return self._control_queued

    def _end_all(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            stream._fail(reason)
        for future in self._opening.values():
            if not future.done():
                future.set_exception(errors.DialFailed(502, reason))
        self._opening.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # --- opening streams --------------------------------------------------------------------------

    async def open(self, target: str, within: float) -> Stream:
        """Open a stream to `target` on the peer; `DialFailed` when it refuses, times out or goes away."""
        if self._closed:
            raise errors.DialFailed(502, "tunnel connection lost")
        stream_id = self.mux.open(target)
        stream = Stream(self, stream_id, target)
        self._streams[stream_id] = stream
        accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[stream_id] = accepted
        self._flush()
        try:
            async with asyncio.timeout(within):
                await accepted
        except TimeoutError:
            self._opening.pop(stream_id, None)
            self.reset_stream(stream_id, "dial timed out")
            self._streams.pop(stream_id, None)
            raise errors.DialFailed(504, f"no answer from the agent within {within:g}s") from None
        except errors.DialFailed:
            self._streams.pop(stream_id, None)
            raise
        self.streams_opened += 1
        return stream

    def ping(self) -> None:
        """Ask the peer's session for a PONG (it answers PINGs within its rate): proof that the peer's tunnel
        code, not only its websocket library, still runs; the answer moves `last_heard`."""
        if not self._closed:
            self.mux.ping()
            self._flush()

    def accept(self, stream: Stream) -> bool:
        """Say the target was reached; False when the peer gave up on the stream meanwhile (its dial timed
        out and it reset the stream, or the connection ended): the caller then drops what it dialled."""
        if stream.done or not self.mux.is_open(stream.id):
            return False
        self.mux.accept(stream.id)
        self.streams_opened += 1
        self._flush()
        return True

    def refuse(self, stream: Stream, reason: str) -> None:
        if not stream.done and self.mux.is_open(stream.id):
            self.mux.refuse(stream.id, reason)
            self._flush()
        self._streams.pop(stream.id, None)

    # --- used by streams --------------------------------------------------------------------------

    def send(self, stream_id: int, data: bytes) -> None:
        try:
            self.mux.send(stream_id, data)
        except errors.UsageError as exc:
            raise ConnectionResetError(str(exc)) from None
        self.bytes_out += len(data)
        self._flush()

    def consumed(self, stream_id: int, count: int) -> None:
        self.mux.consumed(stream_id, count)
        self._flush()

    def close_stream(self, stream_id: int) -> None:
        with contextlib.suppress(errors.UsageError):
            self.mux.close(stream_id)
        self._flush()
        self._forget_if_retired(stream_id)

    def reset_stream(self, stream_id: int, reason: str) -> None:
        self.mux.reset(stream_id, reason)
        self._flush()

    def forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def _forget_if_retired(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not self.mux.is_open(stream_id) and stream._eof:
            self._streams.pop(stream_id, None)

    # --- events from the peer ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        for event in self.mux.events_received():
            match event:
                case mux.DataReceived(stream_id, data):
                    self.bytes_in += len(data)
                    if (stream := self._streams.get(stream_id)) is not None:
                        stream._feed(data)
                case mux.StreamEnded(stream_id):
                    if (stream := self._streams.get(stream_id)) is not None:
                        stream._feed_eof()
                        self._forget_if_retired(stream_id)
                case mux.StreamReset(stream_id, reason):
                    if (stream := self._streams.get(stream_id)) is not None:
                        stream._fail(f"reset by peer: {reason}")
                case mux.StreamAccepted(stream_id):
                    if (future := self._opening.pop(stream_id, None)) is not None and not future.done():
                        future.set_result(None)
                case mux.StreamRefused(stream_id, reason):
                    if (future := self._opening.pop(stream_id, None)) is not None and not future.done():
                        future.set_exception(_refusal(reason))
                case mux.StreamOpened(stream_id, target):
                    self._incoming(stream_id, target)
                case mux.Pong():
                    pass
                case mux.PingReceived(payload):
                    self._ping(payload)
        for stream_id in self.mux.widened():
            if (stream := self._streams.get(stream_id)) is not None:
                stream._wake_writer()
        self._flush()

    def _ping(self, payload: bytes) -> None:
        now = asyncio.get_running_loop().time()
        if self._pings.take(now):
            self.mux.pong(payload)
            return
        self.pings_unanswered += 1
        if not self._excess.take(now):
            raise Flooding(f"more than {self._pings.rate:g} PINGs a second, {self.pings_unanswered} left unanswered")

    def _incoming(self, stream_id: int, target: str) -> None:
        stream = Stream(self, stream_id, target)
        self._streams[stream_id] = stream
        if self._on_open is None:
            self.refuse(stream, "403 this side does not accept streams")
            return
        if self._group is None:
            self.refuse(stream, "502 tunnel connection is closing")
            return
        task = self._group.create_task(
            self._handle(self._on_open, stream), name=f"tunnel-stream-{self.name}-{stream_id}"
        )
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, on_open: OnOpen, stream: Stream) -> None:
        try:
            await on_open(stream)
        except Exception:  # one stream's bug must not end the connection and every other stream with it
            log.exception("stream handler failed peer=%s stream=%d target=%s", self.name, stream.id, stream.target)
            stream.reset("500 internal error on the accepting side")


def _refusal(reason: str) -> errors.DialFailed:
    """A REFUSE reason is `<http status> <text>`; anything else is a 502."""
    code, _, text = reason.partition(" ")
    if code.isdigit() and 400 <= int(code) < 600:
        return errors.DialFailed(int(code), text or reason)
    return errors.DialFailed(502, reason)


async def splice(stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy both ways between a socket and a stream until both directions ended, passing half-closes on.

    A failure in either direction aborts both: the stream is reset and the socket closed."""

    async def outbound() -> None:
        while data := await reader.read(READ_SIZE):
            await stream.write(data)
        stream.write_eof()

    async def inbound() -> None:
        while data := await stream.read():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    stream.deliver_to(writer)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(outbound(), name=f"splice-out-{stream.id}")
            group.create_task(inbound(), name=f"splice-in-{stream.id}")
    except* (ConnectionError, OSError) as failure:
        log.debug("stream aborted peer=%s stream=%d error=%r", stream.session.name, stream.id, failure.exceptions[0])
        stream.reset(f"connection aborted: {failure.exceptions[0]}")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
