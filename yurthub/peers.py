"""Who is at the other end of a loopback TCP connection: the uid that owns the client's socket, asked of the
kernel, so that trust on the plain port goes by something a local process cannot choose.

Why: on the plain port every client is 127.0.0.1 and its User-Agent is whatever it says. Granting the
node's own components their priority (`fairness`: the `node` class) and their offline writes (`statuses`)
on a name alone lets any local process claim them. The kernel knows which user created the client's socket;
only processes of the uids the operator trusts (`--node-uids`: root and yurthub's own by default, which is
what kubelet, kube-proxy and the CNI run as) are the node's components.

How: one exact NETLINK_SOCK_DIAG lookup (SOCK_DIAG_BY_FAMILY with an `inet_diag_req_v2` naming the client
socket's 4-tuple: its source is our peer, its destination our local address, INET_DIAG_NOCOOKIE), not a
dump and not a scan of /proc/net/tcp. The kernel answers inside `sendmsg`, so the reply is there when
`send` returns: it is read with MSG_DONTWAIT, and "nothing there" is a failure, never a wait. This is not
blocking I/O and runs on the event loop (about a microsecond or two).

Pure: `encode` and `decode` (bytes in, a uid or a `Failure` out, tested with a table of replies). I/O:
`lookup` (one netlink socket per call, closed at once: no state to share, no stale replies to skip).
`Trust` remembers the answer per connection (a kept-alive connection is looked up once), counts failures
and logs them at most once a minute.

Fail closed: a lookup that fails (no such socket, no netlink, a reply that makes no sense) is a `Failure`,
and `Trust.trusted` says False: the request is served as anybody's, never as the node's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import socket
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

log = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF

_HEADER = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence number, port id."""
_REQUEST = struct.Struct("=BBBxI")
"""inet_diag_req_v2 up to its sockid: family, protocol, extensions, pad, states."""
_PORTS = struct.Struct("!HH")
"""inet_diag_sockid's source and destination ports (network order)."""
_TAIL = struct.Struct("=III")
"""inet_diag_sockid's interface index and cookie."""
_SOCKID = 4 + 16 + 16 + 4 + 8
"""inet_diag_sockid: ports, source and destination addresses (16 bytes each), interface, cookie."""
_DIAG_MSG = 4 + _SOCKID + 4 * 5
"""inet_diag_msg: family, state, timer, retransmits, sockid, expires, rqueue, wqueue, uid, inode."""
_UID_AT = 4 + _SOCKID + 12
_ERRNO = struct.Struct("=i")

Reason = Literal["refused", "closed", "malformed", "unavailable"]
REASONS: tuple[Reason, ...] = ("refused", "closed", "malformed", "unavailable")
"""Why a lookup failed (a closed set, also the metric's label values): the kernel answered with an error
(`refused`: most often ENOENT, no such socket, as for a client that is not on this host), the client's
socket is closed (`closed`: an orphan or time-wait socket has no inode, and the kernel reports its uid as 0,
so a client that sends its request and closes at once would otherwise pass for root), it answered something
that makes no sense or nothing at all (`malformed`), or it could not be asked (`unavailable`: no netlink
socket, a transport without addresses)."""


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: Reason
    detail: str
    """What went wrong, for the log (an errno name, or which part of the reply was wrong)."""


@dataclasses.dataclass(frozen=True)
class Connection:
    """A TCP connection as the side that accepted it sees it."""

    family: int
    """socket.AF_INET or socket.AF_INET6."""
    peer: tuple[str, int]
    local: tuple[str, int]


def connection(peername: Any, sockname: Any) -> Connection | None:
    """The connection of a transport's `peername` and `sockname` extra info; None if they are not an inet
    TCP connection's (a Unix socket, a closed transport)."""
    if not (isinstance(peername, tuple) and isinstance(sockname, tuple)) or len(peername) < 2 or len(sockname) < 2:
        return None
    try:
        peer_ip, local_ip = ipaddress.ip_address(peername[0]), ipaddress.ip_address(sockname[0])
    except (TypeError, ValueError):
        return None
    if peer_ip.version != local_ip.version:
        return None
    family = socket.AF_INET if peer_ip.version == 4 else socket.AF_INET6
    return Connection(family, (str(peer_ip), int(peername[1])), (str(local_ip), int(sockname[1])))


def encode(conn: Connection, seq: int) -> bytes:
    """The netlink message asking for the socket at the client's end of `conn`: source our peer, destination us."""
    size = 4 if conn.family == socket.AF_INET else 16
    pad = b"\0" * (16 - size)
    sockid = (
        _PORTS.pack(conn.peer[1], conn.local[1])
        + socket.inet_pton(conn.family, conn.peer[0])
        + pad
        + socket.inet_pton(conn.family, conn.local[0])
        + pad
        + _TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    request = _REQUEST.pack(conn.family, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid
    return _HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + request


def decode(reply: bytes, seq: int, conn: Connection) -> int | Failure:
    """The uid in the kernel's `reply` to `encode(conn, seq)`, or why there is none.

    Messages of another sequence number are skipped; the answer must be a SOCK_DIAG_BY_FAMILY message for
    the very socket asked about (family and ports checked), an NLMSG_ERROR is a `refused` failure naming the
    errno, anything else (short, truncated, no answer) is `malformed`."""
    at = 0
    while at + _HEADER.size <= len(reply):
        length, kind, _flags, got_seq, _port = _HEADER.unpack_from(reply, at)
        if length < _HEADER.size or at + length > len(reply):
            return Failure("malformed", f"message length {length} at offset {at} of {len(reply)} bytes")
        body = reply[at + _HEADER.size : at + length]
        at += (length + 3) & ~3  # NLMSG_ALIGN
        if got_seq != seq:
            continue
        if kind == NLMSG_ERROR:
            if len(body) < _ERRNO.size:
                return Failure("malformed", "short NLMSG_ERROR")
            (code,) = _ERRNO.unpack_from(body)
            return Failure("refused", errno.errorcode.get(-code, str(-code)))
        if kind == NLMSG_DONE:
            return Failure("malformed", "NLMSG_DONE without an answer")
        if kind != SOCK_DIAG_BY_FAMILY:
            continue
        if len(body) < _DIAG_MSG:
            return Failure("malformed", f"inet_diag_msg of {len(body)} bytes, expected {_DIAG_MSG}")
        family = body[0]
        sport, dport = _PORTS.unpack_from(body, 4)
        if (family, sport, dport) != (conn.family, conn.peer[1], conn.local[1]):
            return Failure("malformed", f"answer for another socket family={family} ports={sport}->{dport}")
        uid, inode = struct.unpack_from("=II", body, _UID_AT)
        if inode == 0:
            # no file owns the socket any more: the client closed it, and the kernel keeps an orphan or a
            # time-wait socket, whose uid it reports as 0 (root): never believe that
            return Failure("closed", f"the client's socket is closed (state {body[1]})")
        return int(uid)
    return Failure("malformed", f"no answer in {len(reply)} bytes")


def lookup(conn: Connection, seq: int = 1) -> int | Failure:
    """Ask the kernel for the uid owning the client end of `conn` (see the module docstring: it answers
    within `send`, so nothing here waits)."""
    try:
        with socket.socket(
            socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
        ) as nl:
            nl.send(encode(conn, seq))
            reply = nl.recv(8192, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return Failure("malformed", "no answer ready after the request was sent")
    except OSError as exc:
        return Failure("unavailable", errno.errorcode.get(exc.errno or 0, type(exc).__name__))
    return decode(reply, seq, conn)


LOG_EVERY_S = 60.0


class Trust:
    """Whether a connection's client runs as one of `uids`, looked up once per connection.

    Remembered per transport (weakly: an entry goes with its connection, so the table never holds more
    than the connections open) together with its peer address, which must match to be used. Only a uid
    is remembered, never a failure: the next request on the connection asks again. `failed` is called
    with the reason of each failure (a metric); failures are logged at most once every `LOG_EVERY_S`."""

    def __init__(
        self,
        uids: frozenset[int],
        failed: Callable[[Reason], None] = lambda _reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uids = uids
        self._failed = failed
        self._clock = clock
        self._logged_at: float | None = None
        self._seq = 0
        self.known: weakref.WeakKeyDictionary[asyncio.BaseTransport, tuple[Connection, int]] = (
            weakref.WeakKeyDictionary()
        )

    def uid(self, transport: asyncio.BaseTransport | None) -> int | Failure:
        """The uid of `transport`'s client, remembered or looked up now."""
        if transport is None:
            return self._failure(Failure("unavailable", "no transport"))
        conn = connection(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
        if conn is None:
            return self._failure(Failure("unavailable", "not an inet connection"))
        known = self.known.get(transport)
        if known is not None and known[0] == conn:
            return known[1]
        self._seq = self._seq % 0x7FFFFFFF + 1
        answer = lookup(conn, self._seq)
        if isinstance(answer, Failure):
            return self._failure(answer, conn)
        self.known[transport] = (conn, answer)
        return answer

    def trusted(self, transport: asyncio.BaseTransport | None) -> bool:
        """True only when the client's uid is known and one of `uids` (fail closed)."""
        uid = self.uid(transport)
        return not isinstance(uid, Failure) and uid in self.uids

    def _failure(self, failure: Failure, conn: Connection | None = None) -> Failure:
        self._failed(failure.reason)
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            peer = f"{conn.peer[0]}:{conn.peer[1]}" if conn is not None else "unknown"
            log.warning(
                "peer uid lookup failed, client treated as untrusted reason=%s detail=%s peer=%s "
                "(logged at most once a minute; see yurthub_peer_lookup_failures_total)",
                failure.reason,
                failure.detail,
                peer,
            )
        return failure
