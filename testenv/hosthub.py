"""yurthub started on the host from its console script, the way an operator starts it, for tests and benchmarks
that need it beside the real control plane rather than on the node."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from testenv import controlplane
from testenv.kubectl import wait_for


@dataclasses.dataclass
class HostHub:
    proc: subprocess.Popen[bytes]
    proxy: str
    serve: str
    log: Path
    cache: Path
    cert: Path
    key: Path

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.serve}/v1/status", timeout=5) as resp:  # noqa: S310 - loopback URL
            report: dict[str, Any] = json.loads(resp.read())
            return report

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.serve}/metrics", timeout=5) as resp:  # noqa: S310 - loopback URL
            return str(resp.read().decode())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(
    plane: controlplane.ControlPlane, server: str, node: str, directory: Path, *extra: str, program: str = ""
) -> HostHub:
    """Run `yurthub` for `node` (a node client certificate from the cluster CA) against `server`: the console
    script beside this Python, or `program` (another install's, the self-contained executable)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = plane.ca.issue(f"system:node:{node}", organizations=("system:nodes",), client=True).write(
        directory, "node"
    )
    proxy_port, serve_port = controlplane.free_port(), controlplane.free_port()
    log = directory / "yurthub.log"
    yurthub = program or shutil.which("yurthub", path=os.path.dirname(sys.executable))
    if not yurthub:
        raise RuntimeError("the yurthub console script is not installed next to this Python")
    argv = [
        yurthub,
        f"--server-addr={server}",
        f"--node-name={node}",
        f"--ca-file={plane.directory / 'pki' / 'ca.crt'}",
        f"--client-cert={cert}",
        f"--client-key={key}",
        f"--proxy-port={proxy_port}",
        f"--serve-port={serve_port}",
        f"--disk-cache-path={directory / 'cache'}",
        f"--outbox-path={directory / 'outbox'}",
        "--heartbeat-interval-seconds=1",
        "--heartbeat-timeout-seconds=1",
        "--heartbeat-failed-retry=1",
        "--request-timeout-seconds=5",
        *extra,
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    hub = HostHub(
        proc, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{serve_port}", log, directory / "cache", cert, key
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"yurthub exited: {log.read_text()[-2000:]}")
        return bool(hub.status())

    wait_for("yurthub to serve", up, timeout=20, interval=0.2)
    return hub
