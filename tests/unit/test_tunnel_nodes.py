"""What the tunnel server reads from Node objects and kubeconfigs."""

from __future__ import annotations

import base64
import ssl
import tempfile
from pathlib import Path

import pytest

from testenv import pki
from tunnel import errors, nodes


def test_a_nodes_addresses_and_edge_label() -> None:
    name, node = nodes.node_of(
        {
            "metadata": {"name": "edge-1", "labels": {"openyurt.io/is-edge-worker": "true"}},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "10.0.0.7"},
                    {"type": "Hostname", "address": "edge-1"},
                    {"type": "ExternalIP", "address": ""},
                ]
            },
        },
        "openyurt.io/is-edge-worker",
    )
    assert (name, node) == ("edge-1", nodes.Node(("10.0.0.7", "edge-1"), edge=True))
    assert nodes.node_of({"metadata": {"name": "c"}}, "openyurt.io/is-edge-worker") == ("c", nodes.Node((), False))


def write_embedded_kubeconfig(path: Path, ca: pki.CertificateAuthority, client: pki.KeyPair, server: str) -> None:
    """A kubeconfig carrying the CA, the client certificate and its key as embedded data."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        f"clusters: [{{name: k, cluster: {{server: '{server}', "
        f"certificate-authority-data: {b64(ca.pair.cert_pem)}}}}}]\n"
        f"users: [{{name: u, user: {{client-certificate-data: {b64(client.cert_pem)}, "
        f"client-key-data: {b64(client.key_pem)}}}}}]\n"
    )


def test_a_kubeconfig_with_embedded_credentials(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority("kubeconfig-test")
    client = ca.issue("someone", client=True)
    path = tmp_path / "config"
    write_embedded_kubeconfig(path, ca, client, "https://10.0.0.1:6443/")
    access = nodes.load_access(str(path))
    assert access is not None and access.server == "https://10.0.0.1:6443" and access.headers() == {}


def test_a_kubeconfig_client_key_never_touches_a_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key used to go through a file in a temporary directory (failing when there is none). Now the pair
    is loaded from an anonymous memory file: no file is created anywhere."""
    ca = pki.CertificateAuthority("kubeconfig-test")
    client = ca.issue("someone", client=True)
    path = tmp_path / "config"
    write_embedded_kubeconfig(path, ca, client, "https://api:6443")
    not_a_directory = tmp_path / "not-a-directory"
    not_a_directory.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_directory))  # any temporary file would fail here
    before = sorted(tmp_path.rglob("*"))
    access = nodes.load_access(str(path))
    assert access is not None
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(ssl.SSLError):  # and a broken key is still refused
        nodes.load_pair_in_memory(ssl.create_default_context(), client.cert_pem + b"\n-----BEGIN PRIVATE KEY-----\n")


def test_pod_cidrs_are_read_from_the_node_spec() -> None:
    _, node = nodes.node_of({"metadata": {"name": "c"}, "spec": {"podCIDR": "10.244.0.0/24"}}, "edge")
    assert node.pod_cidrs == ("10.244.0.0/24",)
    spec = {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}
    _, node = nodes.node_of({"metadata": {"name": "c"}, "spec": spec}, "edge")
    assert node.pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64")


def test_a_kubeconfig_with_a_token_and_files(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority("kubeconfig-test")
    (tmp_path / "ca.crt").write_bytes(ca.pair.cert_pem)
    path = tmp_path / "config"
    path.write_text(
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "clusters: [{name: k, cluster: {server: 'https://api:6443', certificate-authority: ca.crt}}]\n"
        "users: [{name: u, user: {token: abc}}]\n"
    )
    access = nodes.load_access(str(path))
    assert access is not None and access.headers() == {"Authorization": "Bearer abc"}


def test_a_broken_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("contexts: []\n")
    with pytest.raises(errors.ConfigError, match="cannot read kubeconfig"):
        nodes.load_access(str(path))


def test_watch_events_update_and_an_error_event_asks_for_a_relist() -> None:
    changes: list[tuple[str, nodes.Node | None]] = []
    watch = nodes.NodeWatch(
        nodes.Access("https://x", ssl.create_default_context()),
        "edge",
        lambda _: None,
        lambda n, v: changes.append((n, v)),
    )
    node = {"metadata": {"name": "a"}, "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.9"}]}}
    assert watch.apply_event({"type": "MODIFIED", "object": node})
    assert watch.apply_event({"type": "BOOKMARK", "object": {}})
    assert watch.apply_event({"type": "DELETED", "object": node})
    assert not watch.apply_event({"type": "ERROR", "object": {"code": 410}})
    assert changes == [("a", nodes.Node(("10.0.0.9",), False)), ("a", None)]
