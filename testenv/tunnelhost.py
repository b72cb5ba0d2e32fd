"""yurt-tunnel-server and yurt-tunnel-agent started from their console scripts on the host, the way an operator
starts them, for integration tests, end-to-end tests (the server beside the control plane) and benchmarks.
Also the kube-apiserver egress selector configuration that points the apiserver at the server."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from testenv import controlplane, pki
from testenv.kubectl import wait_for

APISERVER_CLIENT = "yurt-edge-apiserver-tunnel-client"
"""CN of the client certificate kube-apiserver presents to the CONNECT front end."""


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    """kube-apiserver's client certificate for CONNECT."""
    client_key: Path


def issue(
    ca: pki.CertificateAuthority,
    directory: Path,
    *,
    addresses: tuple[str, ...] = ("127.0.0.1",),
    dns_names: tuple[str, ...] = ("localhost", "yurt-tunnel-server"),
) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.pair.cert_pem)
    server = ca.issue("yurt-tunnel-server", server=True, dns_names=dns_names, ip_addresses=addresses).write(
        directory, "server"
    )
    client = ca.issue(APISERVER_CLIENT, client=True).write(directory, "apiserver-client")
    return Certs(ca_file, server[0], server[1], client[0], client[1])


def node_cert(ca: pki.CertificateAuthority, directory: Path, node: str) -> Path:
    """A node client certificate like kubelet's: cert and key in one PEM file."""
    pair = ca.issue(f"system:node:{node}", organizations=("system:nodes",), client=True)
    path = directory / f"node-{node}.pem"
    path.write_bytes(pair.cert_pem + pair.key_pem)
    path.chmod(0o600)
    return path


def egress_selector(certs: Certs, connect_port: int) -> str:
    """EgressSelectorConfiguration sending the `cluster` traffic (kubelet, pods/services proxy) through us."""
    return json.dumps(
        {
            "apiVersion": "apiserver.k8s.io/v1beta1",
            "kind": "EgressSelectorConfiguration",
            "egressSelections": [
                {
                    "name": "cluster",
                    "connection": {
                        "proxyProtocol": "HTTPConnect",
                        "transport": {
                            "tcp": {
                                "url": f"https://127.0.0.1:{connect_port}",
                                "tlsConfig": {
                                    "caBundle": str(certs.ca),
                                    "clientCert": str(certs.client_cert),
                                    "clientKey": str(certs.client_key),
                                },
                            }
                        },
                    },
                }
            ],
        }
    )


def script(name: str) -> str:
    found = shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        raise RuntimeError(f"the {name} console script is not installed next to this Python")
    return found


@dataclasses.dataclass
class Running:
    name: str
    argv: list[str]
    log: Path
    serve_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.serve_port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def status(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.get("/v1/status")[1])
        return report

    def metrics(self) -> str:
        return self.get("/metrics")[1].decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if not self.running():
                raise RuntimeError(f"{self.name} exited: {self.log_text()[-3000:]}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        wait_for(f"{self.name} to be ready", ready, timeout=timeout, interval=0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the replica dies without closing anything."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclasses.dataclass
class Server(Running):
    agent_port: int = 0
    connect_port: int = 0
    uds: Path | None = None


def server(
    certs: Certs,
    directory: Path,
    name: str = "server-0",
    *,
    connect_port: int | None = None,
    agent_ca: Path | None = None,
    kubeconfig: Path | None = None,
    extra: tuple[str, ...] = (),
) -> Server:
    """A started server with its own ports (agents, CONNECT over TLS, Unix socket, health). Agents' client
    certificates are checked against `agent_ca` (the cluster CA, for kubelet's certificates) or `certs.ca`."""
    directory.mkdir(parents=True, exist_ok=True)
    agent_port = controlplane.free_port()
    connect_port = connect_port or controlplane.free_port()
    serve_port = controlplane.free_port()
    uds = directory / f"{name}.sock"
    argv = [
        script("yurt-tunnel-server"),
        f"--server-id={name}",
        "--agent-bind-address=0.0.0.0",
        f"--agent-port={agent_port}",
        f"--agent-cert={certs.server_cert}",
        f"--agent-key={certs.server_key}",
        f"--agent-ca={agent_ca or certs.ca}",
        "--connect-bind-address=127.0.0.1",
        f"--connect-port={connect_port}",
        f"--connect-cert={certs.server_cert}",
        f"--connect-key={certs.server_key}",
        f"--connect-ca={certs.ca}",
        f"--connect-allowed-names={APISERVER_CLIENT}",
        f"--connect-uds={uds}",
        "--serve-address=127.0.0.1",
        f"--serve-port={serve_port}",
        "--keepalive=5",
        *([f"--kubeconfig={kubeconfig}"] if kubeconfig else []),
        *extra,
    ]
    s = Server(
        name, argv, directory / f"{name}.log", serve_port, agent_port=agent_port, connect_port=connect_port, uds=uds
    )
    s.start()
    s.wait_ready()
    return s


def agent(
    certs: Certs,
    cert: Path,
    directory: Path,
    node: str,
    servers: list[str],
    *,
    allowed_ports: tuple[int, ...],
    extra: tuple[str, ...] = (),
    wait: bool = True,
) -> Running:
    directory.mkdir(parents=True, exist_ok=True)
    serve_port = controlplane.free_port()
    argv = [
        script("yurt-tunnel-agent"),
        f"--node-name={node}",
        f"--server-addr={','.join(servers)}",
        f"--ca-file={certs.ca}",
        f"--cert-file={cert}",
        f"--allowed-ports={','.join(str(p) for p in allowed_ports)}",
        f"--serve-port={serve_port}",
        "--keepalive=5",
        "--backoff-max=2",
        *extra,
    ]
    a = Running(f"agent-{node}", argv, directory / f"agent-{node}.log", serve_port)
    a.start()
    if wait:
        a.wait_ready()
    return a


class TargetServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = (
        128  # socketserver's default backlog of 5 overflows (and resets) when many streams dial at once
    )


def target(handler: type[socketserver.BaseRequestHandler]) -> TargetServer:
    """A TCP service on loopback, one thread per connection, standing in for what sits on an edge node
    behind the agent; serving once this returns (`shutdown` and `server_close` stop it)."""
    server = TargetServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
