"""The uid of a loopback connection's client (`peers`): the netlink request and the parsing of the kernel's
replies by table (no socket), then real lookups of real connections on 127.0.0.1, one of them from a client
process of another uid (the tests run as root, which may start a process as `nobody`, 65534)."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import struct
import subprocess
import weakref
from collections.abc import AsyncIterator

import pytest

from yurthub import peers

NOBODY = 65534
CONN = peers.Connection(socket.AF_INET, ("127.0.0.1", 40001), ("127.0.0.1", 10261))
CONN6 = peers.Connection(socket.AF_INET6, ("::1", 40001), ("::1", 10261))


def test_the_request_names_the_clients_socket_exactly() -> None:
    """The layout of the proof of concept that was checked against the kernel: the client's end (source =
    our peer, destination = us), every state, no cookie, one NLM_F_REQUEST (no dump)."""
    sockid = (
        struct.pack("!HH", 40001, 10261)
        + socket.inet_pton(socket.AF_INET, "127.0.0.1")
        + b"\0" * 12
        + socket.inet_pton(socket.AF_INET, "127.0.0.1")
        + b"\0" * 12
        + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    )
    req = struct.pack("=BBBxI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + sockid
    assert peers.encode(CONN, 7) == struct.pack("=IHHII", 16 + len(req), 20, 1, 7, 0) + req
    six = peers.encode(CONN6, 7)
    assert len(six) == 16 + 8 + 48
    assert six[16] == socket.AF_INET6
    assert six[24 + 4 : 24 + 20] == socket.inet_pton(socket.AF_INET6, "::1")


def diag(
    uid: int = 1000,
    *,
    seq: int = 1,
    family: int = socket.AF_INET,
    ports: tuple[int, int] = (40001, 10261),
    inode: int = 4242,
    size: int = 72,
) -> bytes:
    """A SOCK_DIAG_BY_FAMILY reply as the kernel writes it (inet_diag_msg, `size` bytes of it)."""
    sockid = struct.pack("!HH", *ports) + b"\0" * 32 + struct.pack("=III", 0, 1, 2)
    msg = struct.pack("=BBBB", family, 1, 0, 0) + sockid + struct.pack("=IIIII", 0, 0, 0, uid, inode)
    msg = msg[:size]
    return struct.pack("=IHHII", 16 + len(msg), 20, 2, seq, 0) + msg


def error(code: int, *, seq: int = 1, size: int = 4) -> bytes:
    body = (struct.pack("=i", -code) + b"\0" * 16)[:size]
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body


REPLIES = [
    ("the answer", diag(1000), 1000),
    ("root", diag(0), 0),
    ("a stale message of another sequence number is skipped", error(errno.EIO, seq=9) + diag(33), 33),
    ("no such socket", error(errno.ENOENT, size=20), peers.Failure("refused", "ENOENT")),
    ("an errno with no name", error(4000), peers.Failure("refused", "4000")),
    ("a short NLMSG_ERROR", error(errno.ENOENT, size=2), peers.Failure("malformed", "short NLMSG_ERROR")),
    ("nothing", b"", peers.Failure("malformed", "no answer in 0 bytes")),
    ("less than a header", diag()[:10], peers.Failure("malformed", "no answer in 10 bytes")),
    (
        "a truncated message",
        diag()[:40],
        peers.Failure("malformed", "message length 88 at offset 0 of 40 bytes"),
    ),
    (
        "a length shorter than a header",
        struct.pack("=IHHII", 8, 20, 0, 1, 0),
        peers.Failure("malformed", "message length 8 at offset 0 of 16 bytes"),
    ),
    ("a short inet_diag_msg", diag(size=70), peers.Failure("malformed", "inet_diag_msg of 70 bytes, expected 72")),
    (
        "another socket's answer",
        diag(ports=(1, 2)),
        peers.Failure("malformed", "answer for another socket family=2 ports=1->2"),
    ),
    (
        "another family's answer",
        diag(family=socket.AF_INET6),
        peers.Failure("malformed", "answer for another socket family=10 ports=40001->10261"),
    ),
    (
        "done without an answer",
        struct.pack("=IHHII", 20, 3, 0, 1, 0) + b"\0" * 4,
        peers.Failure("malformed", "NLMSG_DONE without an answer"),
    ),
    ("only other sequence numbers", diag(seq=2), peers.Failure("malformed", "no answer in 88 bytes")),
    # a closed client's socket lingers as an orphan or time-wait socket the kernel says root owns
    (
        "a closed socket (uid 0, no inode)",
        diag(0, inode=0),
        peers.Failure("closed", "the client's socket is closed (state 1)"),
    ),
]


@pytest.mark.parametrize(("case", "reply", "expected"), REPLIES, ids=[case for case, _, _ in REPLIES])
def test_replies(case: str, reply: bytes, expected: int | peers.Failure) -> None:
    assert peers.decode(reply, 1, CONN) == expected, case


@pytest.mark.parametrize(
    ("peername", "sockname", "expected"),
    [
        (("127.0.0.1", 5), ("127.0.0.1", 6), peers.Connection(socket.AF_INET, ("127.0.0.1", 5), ("127.0.0.1", 6))),
        (("::1", 5, 0, 0), ("::1", 6, 0, 0), peers.Connection(socket.AF_INET6, ("::1", 5), ("::1", 6))),
        (None, ("127.0.0.1", 6), None),
        ("/run/sock", "/run/sock", None),
        (("127.0.0.1", 5), ("::1", 6, 0, 0), None),
        (("not-an-ip", 5), ("127.0.0.1", 6), None),
    ],
)
def test_connections_of_transport_addresses(peername: object, sockname: object, expected: object) -> None:
    assert peers.connection(peername, sockname) == expected


@pytest.fixture
async def accepted() -> AsyncIterator[tuple[int, asyncio.Queue[asyncio.StreamWriter]]]:
    """A loopback server handing over each accepted connection's writer (its transport is what yurthub sees).
    Every connection it accepted is closed at the end, taken from the queue or not: from Python 3.12 on,
    `Server.wait_closed` waits for them all."""
    queue: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
    handed: weakref.WeakSet[asyncio.StreamWriter] = weakref.WeakSet()  # weak: a test may see a transport go

    async def take(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handed.add(writer)
        await queue.put(writer)

    server = await asyncio.start_server(take, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], queue
    finally:
        for writer in list(handed):
            writer.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)


def _client(port: int, user: int) -> subprocess.Popen[bytes]:
    """A client process of `user` that connects, says so, and stays until its stdin closes. The system's
    python: the virtualenv's interpreter may sit where `nobody` cannot read it."""
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "print('connected', flush=True)\n"
        "sys.stdin.read()\n"
    )
    return subprocess.Popen(["/usr/bin/python3", "-c", code], user=user, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a client of another uid")
async def test_a_client_of_another_uid_is_told_apart_from_root(
    accepted: tuple[int, asyncio.Queue[asyncio.StreamWriter]],
) -> None:
    port, queue = accepted
    failures: list[str] = []
    trust = peers.Trust(frozenset({0}), failures.append)
    client = _client(port, NOBODY)
    try:
        assert client.stdout is not None
        assert await asyncio.to_thread(client.stdout.readline) == b"connected\n"
        nobody = await asyncio.wait_for(queue.get(), 10)
        assert trust.uid(nobody.transport) == NOBODY
        assert not trust.trusted(nobody.transport)
        # our own connection, as root
        _reader, ours = await asyncio.open_connection("127.0.0.1", port)
        mine = await asyncio.wait_for(queue.get(), 10)
        assert trust.uid(mine.transport) == 0
        assert trust.trusted(mine.transport)
        ours.close()
    finally:
        client.communicate(b"")
    assert failures == []


async def test_own_uid_and_one_lookup_per_connection(accepted: tuple[int, asyncio.Queue[asyncio.StreamWriter]]) -> None:
    """Runs as any user: a connection of this process is this process's uid, and is remembered for as long
    as its transport lives (and no longer: the table holds only the connections open)."""
    port, queue = accepted
    trust = peers.Trust(frozenset({os.geteuid()}))
    _reader, ours = await asyncio.open_connection("127.0.0.1", port)
    writer = await asyncio.wait_for(queue.get(), 10)
    assert trust.trusted(writer.transport)
    assert list(trust.known.values()) == [
        (peers.connection(writer.get_extra_info("peername"), writer.get_extra_info("sockname")), os.geteuid())
    ]
    ours.close()
    writer.close()
    await writer.wait_closed()
    del writer
    gc.collect()
    assert len(trust.known) == 0


async def test_a_client_that_closed_its_socket_is_not_believed_to_be_root(
    accepted: tuple[int, asyncio.Queue[asyncio.StreamWriter]],
) -> None:
    """A client that sends and closes at once leaves a socket the kernel reports as root's (uid 0, no inode):
    a failure, not root. Without the check, any local process would pass for root this way."""
    port, queue = accepted
    trust = peers.Trust(frozenset({0, os.geteuid()}))
    raw = socket.create_connection(("127.0.0.1", port))
    writer = await asyncio.wait_for(queue.get(), 10)
    raw.close()  # our end (the server's) stays open: the client's socket lingers in FIN_WAIT2, orphaned
    conn = peers.connection(writer.get_extra_info("peername"), writer.get_extra_info("sockname"))
    assert conn is not None
    for _ in range(500):  # the FIN reaches the other end within the same kernel, but after close returns
        answer = peers.lookup(conn)
        if isinstance(answer, peers.Failure):
            break
        await asyncio.sleep(0.01)
    assert isinstance(answer, peers.Failure) and answer.reason == "closed"
    assert not trust.trusted(writer.transport)


def test_a_lookup_of_no_such_connection_fails_closed_counted_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The kernel's ENOENT for a 4-tuple no socket has (a client not on this host), through a real lookup."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert peers.lookup(peers.Connection(socket.AF_INET, ("127.0.0.1", port), ("127.0.0.1", port))) == peers.Failure(
        "refused", "ENOENT"
    )

    class Gone(asyncio.BaseTransport):
        """A transport of a connection that is not there (any object with `get_extra_info` would do)."""

        def get_extra_info(self, name: str, default: object = None) -> object:
            return {"peername": ("127.0.0.1", port), "sockname": ("127.0.0.1", port)}.get(name, default)

    now = [1000.0]
    failures: list[str] = []
    trust = peers.Trust(frozenset({0, os.geteuid()}), failures.append, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="yurthub.peers"):
        assert not trust.trusted(Gone())
        assert not trust.trusted(Gone())
        now[0] += peers.LOG_EVERY_S
        assert not trust.trusted(Gone())
        assert not trust.trusted(None)
    assert failures == ["refused", "refused", "refused", "unavailable"]
    assert len(caplog.records) == 2
    assert "reason=refused detail=ENOENT" in caplog.records[0].getMessage()
    assert len(trust.known) == 0  # a failure is never remembered
