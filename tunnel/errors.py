"""tunnel's errors. One root; the peer's faults kept apart from our own.

TunnelError
├── ProtocolError    the peer sent something the protocol forbids (bad frame, window overrun, unknown
│                    stream): the connection to that peer is closed
└── UsageError       this side misused the multiplexer (sending on a closed stream, …): a bug here
"""

from __future__ import annotations


class TunnelError(Exception):
    """Root of everything the tunnel raises on purpose."""


class ProtocolError(TunnelError):
    """The peer broke the tunnel protocol."""


class UsageError(TunnelError):
    """This side called the multiplexer in a way its contract forbids."""
