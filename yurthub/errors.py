"""yurthub's errors. One root; each becomes a Kubernetes `Status` a client can act on.

YurthubError
├── BadRequest            the request itself is malformed or dangerous (400)
├── WireFormatError       a response body is not the JSON/protobuf Kubernetes shape we expected
├── StorageError          the disk cache failed (full disk, corruption); online serving goes on
└── Unavailable           the cloud is unreachable and the cache cannot answer (503)
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


class Unavailable(YurthubError):
    """The cloud is unreachable and nothing cached answers this request."""
