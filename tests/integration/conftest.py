"""Integration fixtures: the real control plane (no node), and yurthub started from its console script on
the host, talking to the apiserver through a relay the tests can black-hole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testenv import cluster, controlplane, relay
from testenv.kubectl import wait_for

NODE = "yurt-test"


@dataclass
class Hub:
    proc: subprocess.Popen[bytes]
    proxy: str
    serve: str
    log: Path
    cache: Path

    def status(self) -> dict:  # type: ignore[type-arg]
        with urllib.request.urlopen(f"{self.serve}/v1/status", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.serve}/metrics", timeout=5) as resp:
            return resp.read().decode()


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        c.kubectl.apply(
            [
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                {  # beyond what the Node authorizer gives a node, so tests can read ConfigMaps in bulk
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "yurt-test-view"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}
                    ],
                },
            ]
        )
        yield c


@pytest.fixture(scope="module")
def link(cloud: cluster.Cluster) -> Iterator[relay.Relay]:
    port = int(cloud.plane.server.rsplit(":", 1)[1])  # type: ignore[union-attr]
    r = relay.Relay("127.0.0.1", port)
    yield r
    r.close()


def start_hub(cloud: cluster.Cluster, link: relay.Relay, directory: Path, *extra: str) -> Hub:
    plane = cloud.plane
    assert plane is not None
    pair = plane.ca.issue(f"system:node:{NODE}", organizations=("system:nodes",), client=True)
    cert, key = pair.write(directory, "node")
    proxy_port, serve_port = controlplane.free_port(), controlplane.free_port()
    log = directory / "yurthub.log"
    yurthub = shutil.which("yurthub", path=os.path.dirname(sys.executable))
    assert yurthub, "the yurthub console script is not installed next to this Python"
    argv = [
        yurthub,
        f"--server-addr=https://127.0.0.1:{link.port}",
        f"--node-name={NODE}",
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
    proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    hub = Hub(proc, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{serve_port}", log, directory / "cache")

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"yurthub exited: {log.read_text()[-2000:]}")
        return bool(hub.status())

    wait_for("yurthub to serve", up, timeout=20, interval=0.2)
    return hub


def stop_hub(hub: Hub) -> None:
    hub.proc.terminate()
    try:
        hub.proc.wait(10)
    except subprocess.TimeoutExpired:
        hub.proc.kill()
        hub.proc.wait()


@pytest.fixture(scope="module")
def hub(cloud: cluster.Cluster, link: relay.Relay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = start_hub(cloud, link, tmp_path_factory.mktemp("yurthub"))
    yield h
    stop_hub(h)


def wait_cloud(hub: Hub, reachable: bool) -> None:
    wait_for(
        f"yurthub to see the cloud {'back' if reachable else 'gone'}",
        lambda: hub.status()["cloud"]["reachable"] is reachable,
        timeout=30,
        interval=0.2,
    )
    time.sleep(0.2)
