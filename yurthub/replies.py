"""The two kinds of answer yurthub makes itself: a Kubernetes `Status` error, and bytes from the cache."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from aiohttp import web

from yurthub import cache, status


def error(code: int, message: str, reason: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    """A `Status` body client-go can parse, with a reason and a message a person can act on."""
    return web.Response(
        status=code, body=status.body(code, message, reason), content_type="application/json", headers=headers
    )


def cached(answer: cache.Answer) -> web.Response:
    """A response carrying cached bytes exactly, with their own status (200, 201 for a kept token, or the
    cloud's 404 for an object it deleted) and content type."""
    return web.Response(
        status=answer.status, body=answer.body, content_type=None, headers={"Content-Type": answer.content_type}
    )


def overloaded(what: str, retry_after_s: int) -> web.Response:
    """429 with `Retry-After`: client-go waits and retries, so a flood slows its sender and nobody else."""
    return error(
        429,
        f"yurthub holds as many bytes in memory as it may ({what}); retry in {retry_after_s}s",
        "TooManyRequests",
        {"Retry-After": str(retry_after_s)},
    )


async def send(request: web.Request, response: web.Response) -> web.Response:
    """Write `response` now rather than after the handler returns, so the bytes it holds have left before
    the caller gives their budget back. A client that went away is nobody's error."""
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write_eof()
    return response
