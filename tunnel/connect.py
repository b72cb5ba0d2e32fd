"""HTTP CONNECT exactly as kube-apiserver's egress selector speaks it (`proxyProtocol: HTTPConnect`). Pure.

The apiserver opens one connection per dial and sends

    CONNECT <host>:<port> HTTP/1.1\r\n
    Host: 127.0.0.1\r\n
    \r\n

with no credentials: over TCP its identity is its TLS client certificate, over a Unix socket the socket's
permissions. It accepts the dial only on status 200, and fails it if any byte follows the response head, so
the answer is a status line and a blank line, nothing more, written only once the agent has reached the
target. Everything after that on the connection is the apiserver's own TLS to the kubelet, carried as is.

Requests are bounded (`MAX_HEAD`), and anything else than a well-formed CONNECT to `host:port` is a
`BadConnect` carrying the status to answer with.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from tunnel import errors

MAX_HEAD = 8 * 1024
"""Bytes of request line and headers we read before giving up with 431."""

_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    """A DNS name or an IP address (IPv6 without brackets)."""
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def head_complete(buffer: bytes) -> int:
    """Length of the request head in `buffer` (through the blank line), or 0 while it is still incomplete."""
    end = buffer.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else 0


def parse(head: bytes) -> Target:
    """The target of one CONNECT request head (request line, headers, blank line)."""
    if len(head) > MAX_HEAD:
        raise errors.BadConnect(431, f"request head longer than {MAX_HEAD} bytes")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise errors.BadConnect(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise errors.BadConnect(400, "malformed request line")
    method, authority, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise errors.BadConnect(400, f"unsupported protocol version {version[:16]!r}")
    if method != "CONNECT":
        raise errors.BadConnect(405, f"only CONNECT is served here, not {method[:16]!r}")
    for line in lines[1:]:
        if line and (":" not in line or line[0] in " \t"):
            raise errors.BadConnect(400, "malformed header line")
    return parse_target(authority)


def parse_target(authority: str) -> Target:
    """`host:port` or `[v6]:port`, as CONNECT carries it."""
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise errors.BadConnect(400, f"malformed target {authority[:64]!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise errors.BadConnect(400, f"malformed IPv6 address in {authority[:64]!r}") from None
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep or not host:
            raise errors.BadConnect(400, f"target {authority[:64]!r} is not host:port")
        if not _HOST_NAME.match(host):
            raise errors.BadConnect(400, f"malformed host in {authority[:64]!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise errors.BadConnect(400, f"bad port in {authority[:64]!r}")
    return Target(host, int(port_text))


def response(status: int, message: str = "") -> bytes:
    """The whole answer. 200 is the head alone (nothing may follow it); a refusal says why in a text body."""
    reason = _REASONS.get(status, "Error")
    if status == 200:
        return f"HTTP/1.1 200 {reason}\r\n\r\n".encode()
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
