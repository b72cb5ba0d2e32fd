"""yurt-manager reads the names the apiserver's serving certificate carries from a real TLS handshake, checked
against the cluster CA (a server that another CA vouches for is not believed)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from converter import controller, errors
from testenv import pki


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca = pki.CertificateAuthority("cluster-ca")
    crt, key = ca.issue(
        "kube-apiserver",
        server=True,
        dns_names=("kubernetes", "API.Example"),
        ip_addresses=("127.0.0.1", "10.96.0.1"),
    ).write(tmp_path, "apiserver")
    ca_file, _ = ca.pair.write(tmp_path, "ca")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}", ca_file
    stop.set()
    listener.close()
    thread.join(5)


def test_the_names_come_from_the_servers_certificate(tls_server: tuple[str, Path]) -> None:
    server, ca_file = tls_server
    assert controller.apiserver_names(server, str(ca_file)) == {"127.0.0.1", "10.96.0.1", "kubernetes", "api.example"}


def test_a_server_the_cluster_ca_does_not_vouch_for_is_not_believed(
    tls_server: tuple[str, Path], tmp_path: Path
) -> None:
    server, _ = tls_server
    other, _ = pki.CertificateAuthority("other-ca").pair.write(tmp_path / "other", "ca")
    with pytest.raises(errors.Unreachable, match="serving certificate"):
        controller.apiserver_names(server, str(other))
