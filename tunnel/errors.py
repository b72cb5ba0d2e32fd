"""tunnel's errors. One root; the peer's faults kept apart from our own.

TunnelError
├── ProtocolError    the peer sent something the protocol forbids (bad frame, window overrun, unknown
│                    stream): the connection to that peer is closed
├── UsageError       this side misused the multiplexer (sending on a closed stream, …): a bug here
├── BadConnect       an HTTP CONNECT request we will not serve; carries the HTTP status to answer with
├── DialFailed       a stream could not be opened to its target; carries the HTTP status for the front end
│                    (403 not allowed, 502 no agent or refused, 504 timed out) and the reason to show
└── ConfigError      settings that cannot work (missing certificate, bad address): the command exits 2
"""

from __future__ import annotations


class TunnelError(Exception):
    """Root of everything the tunnel raises on purpose."""


class ProtocolError(TunnelError):
    """The peer broke the tunnel protocol."""


class UsageError(TunnelError):
    """This side called the multiplexer in a way its contract forbids."""


class BadConnect(TunnelError):
    """A CONNECT request that is refused before anything is dialled."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DialFailed(TunnelError):
    """The target could not be reached through the tunnel."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ConfigError(TunnelError):
    """Settings that cannot work."""
