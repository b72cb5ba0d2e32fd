"""yurthub's errors. One root. What reaches a client becomes a Kubernetes `Status`
it can act on; `Unreachable` never does: it sends the request to the cache.

YurthubError
├── BadRequest            the request itself is malformed or dangerous (400)
├── WireFormatError       a response body is not the JSON/protobuf Kubernetes shape we expected
├── StorageError          the disk cache failed (full disk, corruption); online serving goes on
├── Unreachable           a cloud server could not be reached for a forwarded request: the cache answers instead
├── CloudTimeout          a reachable cloud server did not answer one request in time: that request gets 504
├── Unfilterable          a response its filters cannot be applied to: the client gets an error, never the raw body
├── PatchRefused          an offline patch the apiserver would refuse too (415, 400, 422): its code and reason
└── PatchConflict         an offline patch whose uid or resourceVersion precondition fails (409)
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


class CloudTimeout(YurthubError):
    """A connected cloud server sent nothing for `request_timeout_s` on one request; cloud health is unchanged."""


class Unfilterable(YurthubError):
    """A response (or a filter's input, e.g. topology facts) that its filters cannot work with: fail closed."""


class PatchRefused(YurthubError):
    """A patch yurthub applies offline that kube-apiserver would refuse: the code and reason it would answer."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class PatchConflict(YurthubError):
    """An offline patch whose preconditions (uid, resourceVersion) do not hold for the cached object: 409."""
