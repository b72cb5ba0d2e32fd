"""Kubernetes `Status` bodies: every error a client sees from yurthub is one, so client-go can parse it."""

from __future__ import annotations

import json

REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def body(code: int, message: str, reason: str | None = None) -> bytes:
    doc = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, "InternalError"),
        "code": code,
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"
