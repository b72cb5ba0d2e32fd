"""yurt-manager's HTTP endpoints: `/healthz` (the loop is turning), `/readyz` (one pass completed, as leader
or as standby) and `/metrics` (Prometheus text). A plain threaded server beside the synchronous loop."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable

import prometheus_client as prom


def start(
    host: str, port: int, registry: prom.CollectorRegistry, alive: Callable[[], bool], ready: Callable[[], bool]
) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/livez"):
                ok = alive()
                self._answer(200 if ok else 500, b"ok" if ok else b"control loop stalled", "text/plain")
            elif path == "/readyz":
                ok = ready()
                self._answer(200 if ok else 503, b"ok" if ok else b"no pass completed yet", "text/plain")
            else:
                self._answer(404, b"not found", "text/plain")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="yurt-manager-http", daemon=True).start()
    return server


def stalled_after(seconds: float, last: Callable[[], float]) -> Callable[[], bool]:
    """A liveness check: the loop counts as alive while its last pass is under `seconds` old."""
    started = time.monotonic()
    return lambda: time.monotonic() - max(last(), started) < seconds
