"""The plain-HTTP side door both ends serve: `/healthz`, `/readyz`, `/metrics`, `/v1/status`.

With `status_loopback_only`, `/v1/status` (which names peers and their addresses) answers 403 to any client
that is not on loopback: the port is reachable from the cluster network for probes and Prometheus."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def app(
    ready: Callable[[], tuple[bool, str]],
    status: Callable[[], dict[str, Any]],
    registry: CollectorRegistry,
    *,
    status_loopback_only: bool = False,
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        ok, why = ready()
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_page(request: web.Request) -> web.Response:
        if status_loopback_only and not _on_loopback(request.remote):
            return web.Response(
                status=403,
                text="/v1/status answers on loopback only (or on the CONNECT port with --status-on-connect)\n",
            )
        return web.Response(text=json.dumps(status(), indent=2) + "\n", content_type="application/json")

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics)
    application.router.add_get("/v1/status", status_page)
    return application


def _on_loopback(remote: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


async def start(application: web.Application, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
