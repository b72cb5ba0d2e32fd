"""The two kinds of answer yurthub makes itself: a Kubernetes `Status` error, and bytes from the cache."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from yurthub import cache, status


def error(code: int, message: str, reason: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    """A `Status` body client-go can parse, with a reason and a message a person can act on."""
    return web.Response(
        status=code, body=status.body(code, message, reason), content_type="application/json", headers=headers
    )


def cached(answer: cache.Answer, code: int | None = None) -> web.Response:
    """A response carrying cached bytes exactly, with their own content type."""
    return web.Response(
        status=code or answer.status, body=answer.body, content_type=None, headers={"Content-Type": answer.content_type}
    )
