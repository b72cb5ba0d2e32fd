"""The tunnel end to end: the real kube-apiserver reaches the real edge node's kubelet only through it.

The node is behind NAT (the cloud cannot open connections to it). kube-apiserver's egress selector sends
its `cluster` traffic by HTTP CONNECT over mutual TLS to a load balancer in front of two yurt-tunnel-server
replicas started from the console script; yurt-tunnel-agent runs on the node as the systemd unit from
`systemd/`, authenticated by kubelet's own client certificate, connected to both replicas.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testenv import balancer, cluster, controlplane, pki, tunnelhost, tunnelinstall, workloads
from testenv.kubectl import KubectlError, wait_for

APP = "tunnelled"
SCRIPT = (  # `;` not `&&` before the `&`: only the counting loop goes to the background, after /www exists
    "mkdir -p /www; echo hello-through-the-tunnel > /www/index.html; "
    "(i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done) & exec httpd -f -p 8080 -h /www"
)
CA = pki.CertificateAuthority("yurt-edge-tunnel-ca")
"""The tunnel's own CA: its serving certificate and kube-apiserver's client certificate for CONNECT."""


@dataclasses.dataclass
class Tunnel:
    certs: tunnelhost.Certs
    lb_port: int
    replicas: list[tunnelhost.Server] = dataclasses.field(default_factory=list)
    lb: balancer.Balancer | None = None


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Tunnel:
    directory = tmp_path_factory.mktemp("tunnel")
    node = cluster.Settings().node
    certs = tunnelhost.issue(CA, directory / "pki", addresses=("127.0.0.1", node.cloud_address))
    return Tunnel(certs, controlplane.free_port())


@pytest.fixture(scope="module")
def cluster_settings(tunnel: Tunnel) -> cluster.Settings:
    node = dataclasses.replace(cluster.Settings().node, reachable_from_cloud=False)
    return cluster.Settings(node=node, egress_selector_config=tunnelhost.egress_selector(tunnel.certs, tunnel.lb_port))


@pytest.fixture(scope="module")
def running(kube: cluster.Cluster, tunnel: Tunnel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tunnel]:
    assert kube.plane is not None
    directory = tmp_path_factory.mktemp("servers")
    kube.kubectl.run("label", "node", kube.settings.node.name, "openyurt.io/is-edge-worker=true")
    tunnel.replicas = [
        tunnelhost.server(
            tunnel.certs,
            directory,
            f"replica-{i}",
            agent_ca=kube.plane.directory / "pki" / "ca.crt",  # agents present kubelet's certificate
            kubeconfig=kube.plane.admin_kubeconfig,
            extra=("--dial-timeout=5",),
        )
        for i in range(2)
    ]
    tunnel.lb = balancer.Balancer([("127.0.0.1", r.connect_port) for r in tunnel.replicas], port=tunnel.lb_port)
    tunnelinstall.install_agent(
        kube.node,
        ca_pem=CA.pair.cert_pem,
        servers=[f"{kube.settings.node.cloud_address}:{r.agent_port}" for r in tunnel.replicas],
    )
    wait_for("the agent on both replicas", lambda: _servers_held(kube) == 2, timeout=60)
    yield tunnel
    tunnel.lb.close()
    for r in tunnel.replicas:
        r.stop()


def _servers_held(kube: cluster.Cluster) -> int:
    return len(tunnelinstall.agent_status(kube.node).get("servers", []))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pod(kube: cluster.Cluster, running: Tunnel) -> str:
    kube.kubectl.apply([workloads.deployment(APP, SCRIPT)])

    def name() -> str:
        pods = kube.kubectl.get("pods", "-n", "default", "-l", f"app={APP}")["items"]
        running_pods = [p for p in pods if p["status"].get("phase") == "Running"]
        return str(running_pods[0]["metadata"]["name"]) if len(running_pods) == 1 else ""

    wait_for("the pod to run", lambda: bool(name()), timeout=90)
    return name()


def logs(kube: cluster.Cluster, pod: str, *args: str) -> str:
    return kube.kubectl.run("logs", "-n", "default", pod, *args, timeout=30)


def test_without_the_tunnel_the_node_cannot_be_reached(kube: cluster.Cluster, running: Tunnel, pod: str) -> None:
    node = kube.settings.node
    with pytest.raises(OSError), socket.create_connection((node.address, 10250), timeout=3):
        pass  # the node is behind NAT: the cloud cannot open a connection to its kubelet
    kube.node.run(["systemctl", "stop", "yurt-tunnel-agent"])
    try:
        wait_for(
            "no agent on the replicas", lambda: all(not r.status()["agents"] for r in running.replicas), timeout=30
        )
        for command in (["logs", "-n", "default", pod], ["exec", "-n", "default", pod, "--", "true"]):
            with pytest.raises(KubectlError) as failed:
                kube.kubectl.run(*command, timeout=30)
            assert "code 502" in str(failed.value), failed.value  # the tunnel said: no agent for that node
    finally:
        kube.node.run(["systemctl", "start", "yurt-tunnel-agent"])
    wait_for("the agent back on both replicas", lambda: _servers_held(kube) == 2, timeout=60)


def test_kubectl_logs_through_the_tunnel(kube: cluster.Cluster, running: Tunnel, pod: str) -> None:
    wait_for("the pod's first lines", lambda: "line 1" in logs(kube, pod), timeout=30)
    assert logs(kube, pod).startswith("line 0\nline 1\n")


def test_kubectl_logs_follow_streams_new_lines(kube: cluster.Cluster, running: Tunnel, pod: str) -> None:
    proc = subprocess.Popen(
        kube.kubectl.argv("logs", "-f", "--tail=1", "-n", "default", pod),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while len(seen) < 4 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                line = proc.stdout.readline().decode()
                if match := re.fullmatch(r"line (\d+)\n", line):
                    seen.append(int(match.group(1)))
        assert len(seen) == 4, (seen, proc.stderr.read1(4096) if proc.poll() is not None else b"")  # type: ignore[union-attr]
        assert seen == list(range(seen[0], seen[0] + 4))  # lines as they are written, in order
    finally:
        proc.kill()
        proc.wait()


def test_kubectl_exec_with_stdin_ends_cleanly(kube: cluster.Cluster, running: Tunnel, pod: str) -> None:
    text = "".join(f"{i} {os.urandom(20).hex()}\n" for i in range(5000))  # ~250 KB through stdin
    out = kube.kubectl.run("exec", "-i", "-n", "default", pod, "--", "sh", "-c", "cat; echo :stdin-closed", stdin=text)
    assert out == text + ":stdin-closed\n"  # stdin's end arrived (half-close), then the command finished


def test_kubectl_cp_both_ways(kube: cluster.Cluster, running: Tunnel, pod: str, tmp_path: Path) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    kube.kubectl.run("cp", str(source), f"default/{pod}:/tmp/payload.bin", timeout=60)
    remote = kube.kubectl.run("exec", "-n", "default", pod, "--", "sha256sum", "/tmp/payload.bin").split()[0]
    assert remote == hashlib.sha256(source.read_bytes()).hexdigest()
    back = tmp_path / "back.bin"
    kube.kubectl.run("cp", f"default/{pod}:/tmp/payload.bin", str(back), timeout=60)
    assert back.read_bytes() == source.read_bytes()


def test_kubectl_port_forward(kube: cluster.Cluster, running: Tunnel, pod: str) -> None:
    proc = subprocess.Popen(
        kube.kubectl.argv("port-forward", "-n", "default", f"pod/{pod}", ":8080"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+) -> 8080", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        for _ in range(3):  # several connections over the one forward
            url = f"http://127.0.0.1:{match.group(1)}/index.html"
            with urllib.request.urlopen(url, timeout=20) as resp:
                assert resp.read() == b"hello-through-the-tunnel\n"
    finally:
        proc.terminate()
        proc.wait()


def test_losing_a_replica_costs_nothing_and_the_agent_comes_back_to_it(
    kube: cluster.Cluster, running: Tunnel, pod: str
) -> None:
    first, second = running.replicas
    first.kill()
    # At once, with no reconnect: the other replica already holds a connection from the agent.
    assert "line" in logs(kube, pod, "--tail=1")
    assert kube.kubectl.run("exec", "-n", "default", pod, "--", "echo", "via-second").strip() == "via-second"
    first.start()
    first.wait_ready()
    wait_for("the agent back on the restarted replica", lambda: _servers_held(kube) == 2, timeout=60)
    second.kill()
    try:
        assert "line" in logs(kube, pod, "--tail=1")  # now through the restarted one
    finally:
        second.start()
        second.wait_ready()
    wait_for("the agent on both replicas again", lambda: _servers_held(kube) == 2, timeout=60)


def test_the_servers_status_and_metrics_show_the_node(kube: cluster.Cluster, running: Tunnel, pod: str) -> None:
    assert "line" in logs(kube, pod, "--tail=1")
    statuses: list[dict[str, Any]] = [r.status() for r in running.replicas]
    for status in statuses:
        (agent,) = status["agents"]
        assert agent["node"] == kube.settings.node.name
        assert kube.settings.node.address in agent["addresses"]  # from the Node object, not from the agent
    assert any('yurt_tunnel_connect_requests_total{code="200"}' in r.metrics() for r in running.replicas)
