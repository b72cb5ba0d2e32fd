"""Errors of the converter, one root.

    ConverterError
    ├── ApiError                  the apiserver answered a request with an error Status
    │   ├── NotFound              404: the object does not exist
    │   └── Conflict              409: AlreadyExists, or a stale resourceVersion on update
    ├── Unreachable               no answer from the apiserver (connection refused, TLS, timeout)
    ├── LockHeld                  another yurtctl run holds the conversion lock
    ├── PreflightFailed           the cluster or a node is not in a state convert/revert can start from
    └── NodeStepFailed            a node-side step failed (and was rolled back where it could be)

Foreign exceptions (the kubernetes client's, urllib3's, OSError from the node's files) are translated once,
at the seam that met them, with ``raise ... from exc``.
"""

from __future__ import annotations


class ConverterError(Exception):
    """Root of every error the converter raises on purpose."""


class ApiError(ConverterError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class Expired(ApiError):
    """A watch's resourceVersion is too old (410 Gone): list again."""


class Unreachable(ConverterError):
    pass


class LockHeld(ConverterError):
    pass


class PreflightFailed(ConverterError):
    pass


class NodeStepFailed(ConverterError):
    pass


def from_status(status: int, reason: str, message: str) -> ApiError:
    """The error type for an apiserver answer."""
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        return Conflict(status, reason, message)
    if status == 410:
        return Expired(status, reason, message)
    return ApiError(status, reason, message)
