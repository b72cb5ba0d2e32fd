"""The plain-HTTP side door both ends serve: `/healthz`, `/readyz`, `/metrics`, `/v1/status`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def app(
    ready: Callable[[], tuple[bool, str]], status: Callable[[], dict[str, Any]], registry: CollectorRegistry
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_page(_request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(status(), indent=2) + "\n", content_type="application/json")

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/v1/status", status_page)
    return application


async def start(application: web.Application, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
