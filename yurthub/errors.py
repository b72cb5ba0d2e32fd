"""yurthub's errors. One root. What reaches a client becomes a Kubernetes `Status`
it can act on; `Unreachable` never does: it sends the request to the cache.

YurthubError
├── BadRequest            the request itself is malformed or dangerous (400)
├── WireFormatError       a response body is not the JSON/protobuf Kubernetes shape we expected
├── StorageError          the disk cache failed (full disk, corruption); online serving goes on
└── Unreachable           a cloud server did not answer a forwarded request: the cache answers instead
"""

from __future__ import annotations


class YurthubError(Exception):
    """Root of everything yurthub raises on purpose."""


class BadRequest(YurthubError):
    """A request yurthub refuses to forward or cache: the message says what is wrong with it."""


class WireFormatError(YurthubError):
    """A body that does not have the Kubernetes wire shape its content type promises."""


class StorageError(YurthubError):
    """The disk cache could not read or write; the proxy keeps forwarding while this lasts."""


class Unreachable(YurthubError):
    """A cloud server could not be reached for this request, and nothing was sent back to the client yet."""
