"""yurthub's own identity against the real apiserver and controller-manager: a join by bootstrap token, a
restart on the stored certificate, an expired certificate while the cloud is away, a denied serving CSR."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path
from typing import Any

from cryptography import x509

from testenv import cluster, relay
from testenv.kubectl import wait_for
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud
from tests.integration.test_yurthub_proxy import call

PATH = "/api/v1/namespaces/default/services/kubernetes"


def join(cloud: cluster.Cluster, link: relay.Relay, root: Path, *extra: str) -> Hub:
    """Start yurthub with the bootstrap token in an owner-only file, as an operator passes it."""
    assert cloud.plane is not None
    token_file = root / "join-token"
    if not token_file.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(fd, cloud.plane.bootstrap_token.encode() + b"\n")
        finally:
            os.close(fd)
    token = f"--join-token-file={token_file}"
    return start_hub(cloud, link, root, token, f"--root-dir={root}", "--csr-poll-seconds=0.5", *extra)


def yurthub_csrs(cloud: cluster.Cluster, kind: str) -> list[dict[str, Any]]:
    return [c for c in cloud.kubectl.get("csr")["items"] if c["metadata"]["name"].startswith(f"yurthub-{kind}-{NODE}-")]


def test_a_joined_hub_restarts_offline_with_an_expired_certificate_and_renews_by_token_when_back(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    assert cloud.plane is not None
    token_id = cloud.plane.bootstrap_token.split(".")[0]
    hub = join(cloud, link, tmp_path)
    pem = tmp_path / "pki" / "yurthub-client-current.pem"
    try:
        client = hub.status()["certificates"]["client"]
        assert client["source"] == "csr" and client["subject"] == f"CN=system:node:{NODE},O=system:nodes"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert call(hub.proxy + PATH)[0] == 200  # kubelet's GET, through the new identity, now cached
    finally:
        stop_hub(hub)
    by_token = [c for c in yurthub_csrs(cloud, "client") if c["spec"]["username"] == f"system:bootstrap:{token_id}"]
    assert len(by_token) == 1

    # Time passes while the node is away: the stored certificate has expired.
    expired = cloud.plane.ca.issue(
        f"system:node:{NODE}",
        organizations=("system:nodes",),
        client=True,
        valid_until=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1),
    )
    pem.write_bytes(expired.cert_pem + expired.key_pem)
    link.cut()
    try:
        hub = join(cloud, link, tmp_path)  # starts at once on the stored file, no CSR needed to serve
        assert hub.status()["certificates"]["client"]["expired"] is True
        code, _, body = call(hub.proxy + PATH)
        assert code == 200 and b'"kubernetes"' in body  # the cache answers, not a 503
    finally:
        link.restore()
    try:
        wait_for(
            "a new client certificate by the bootstrap token",
            lambda: hub.status()["certificates"]["client"]["expired"] is False,
            timeout=60,
        )
        wait_cloud(hub, reachable=True)
        assert hub.status()["certificates"]["client"]["rotations"] == 1
        by_token = [c for c in yurthub_csrs(cloud, "client") if c["spec"]["username"] == f"system:bootstrap:{token_id}"]
        assert len(by_token) == 2
        assert 'yurthub_certificate_rotations_total{kind="client"} 1.0' in hub.metrics()
    finally:
        stop_hub(hub)
    assert cloud.plane.bootstrap_token not in hub.log.read_text()
    assert "PRIVATE KEY" not in hub.log.read_text()


def test_a_denied_serving_request_is_reported_and_an_approved_one_is_written(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    hub = join(cloud, link, tmp_path)
    try:
        wait_for("a serving CSR", lambda: bool(hub.status()["certificates"]["serving"]["pendingCSR"]), timeout=20)
        denied = hub.status()["certificates"]["serving"]["pendingCSR"]
        cloud.kubectl.run("certificate", "deny", denied)
        wait_for(
            "the denial to show",
            lambda: f"CSR {denied} denied" in (hub.status()["certificates"]["serving"]["problem"] or ""),
            timeout=20,
        )
        assert hub.status()["certificates"]["serving"]["subject"] is None
        assert not (tmp_path / "pki" / "yurthub-server-current.pem").exists()
        assert call(hub.proxy + PATH)[0] == 200  # the plain port serves all along
    finally:
        stop_hub(hub)
    # A restart asks again at once (the wait after a denial lives in memory); approved, it is written.
    hub = join(cloud, link, tmp_path, "--node-ip=10.213.0.2")
    try:
        wait_for("a new serving CSR", lambda: bool(hub.status()["certificates"]["serving"]["pendingCSR"]), timeout=20)
        name = hub.status()["certificates"]["serving"]["pendingCSR"]
        assert name != denied
        cloud.kubectl.run("certificate", "approve", name)
        wait_for(
            "the serving certificate", lambda: bool(hub.status()["certificates"]["serving"]["subject"]), timeout=20
        )
        served = tmp_path / "pki" / "yurthub-server-current.pem"
        assert stat.S_IMODE(served.stat().st_mode) == 0o600
        text = served.read_text()
        assert text.index("BEGIN CERTIFICATE") < text.index("PRIVATE KEY")
        # Only the door and the node IP: nothing that names the apiserver (loopback, its ClusterIP, the
        # kubernetes names), which yurt-manager would not approve.
        san = x509.load_pem_x509_certificate(served.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["169.254.2.1", "10.213.0.2"]
        assert san.value.get_values_for_type(x509.DNSName) == []
    finally:
        stop_hub(hub)
