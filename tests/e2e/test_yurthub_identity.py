"""yurthub's own node identity on the real node: a join by bootstrap token, rotation of 1-minute
certificates under an open watch, and an expired certificate while the link is cut.

One cluster for the module, whose controller-manager signs certificates for 1 minute; the tests run in
order and build on each other (the node joined by the first is the one the others rotate and cut off), so
each wait for a certificate to age happens once.
"""

from __future__ import annotations

import datetime
import re
import stat
from typing import Any

import pytest
from cryptography import x509

from testenv import cluster, hubinstall
from testenv.kubectl import node_ready, wait_for
from testenv.node import NodeSettings
from tests.e2e.test_yurthub_node import containers_on_node, pod, running_pods

NODE = "edge-1"
HUB_ARGS = (
    "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1 --csr-poll-seconds=1"
)
CLIENT_FILE = "/var/lib/yurthub/pki/yurthub-client-current.pem"
SERVING_FILE = "/var/lib/yurthub/pki/yurthub-server-current.pem"
WATCH_OUT = "/var/lib/yurt-edge/watch.out"
LIFETIME_S = 60


@pytest.fixture(scope="module")
def cluster_settings() -> cluster.Settings:
    return cluster.Settings(
        node=NodeSettings(kubelet_through_yurthub=True),
        extra_controller_manager_args=(f"--cluster-signing-duration={LIFETIME_S}s",),
    )


def certs(kube: cluster.Cluster) -> dict[str, Any]:
    report: dict[str, Any] = hubinstall.yurthub_status(kube.node)["certificates"]  # type: ignore[assignment]
    return report


def csrs(kube: cluster.Cluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.kubectl.get("csr")["items"]
    return items


def approved(csr: dict[str, Any]) -> bool:
    return any(c["type"] == "Approved" for c in csr.get("status", {}).get("conditions", []))


def approve_pending_serving(kube: cluster.Cluster) -> None:
    """What an admin does when yurthub's log asks: approve the serving CSR it names."""
    name = certs(kube)["serving"]["pendingCSR"]
    if name:
        kube.kubectl.run("certificate", "approve", name, check=False)


def node_file(kube: cluster.Cluster, path: str) -> bytes:
    return (kube.node.directory / "upper" / path.lstrip("/")).read_bytes()


def metric(kube: cluster.Cluster, name: str, kind: str) -> float:
    page = kube.node.run(
        [
            "python3",
            "-c",
            "import urllib.request as u;print(u.urlopen('http://127.0.0.1:10267/metrics').read().decode())",
        ]
    ).stdout
    found = re.findall(rf'^{name}\{{kind="{kind}"\}} (\S+)', page, re.M)
    assert found, f"{name} for {kind} not in the metrics"
    return float(found[0])


def via_hub(kube: cluster.Cluster, path: str, agent: str = "kubelet/v1.31 (linux/amd64)") -> tuple[int, str]:
    script = (
        "import sys,urllib.request as u,urllib.error as e\n"
        f"r=u.Request('http://127.0.0.1:10261{path}',headers={{'User-Agent':{agent!r}}})\n"
        "try:\n c=u.urlopen(r,timeout=20);print(c.status);print(c.read().decode())\n"
        "except e.HTTPError as x:\n print(x.code);print(x.read().decode())\n"
    )
    out = kube.node.run(["python3", "-c", script]).stdout
    code, _, body = out.partition("\n")
    return int(code), body


@pytest.fixture(scope="module")
def edge(kube: cluster.Cluster) -> cluster.Cluster:
    """A node whose kubelet knows only yurthub, and yurthub only a bootstrap token."""
    assert kube.plane is not None
    hubinstall.install(
        kube.node,
        server=kube.plane.cloud_server,
        wheels=hubinstall.wheelhouse(),
        extra_args=HUB_ARGS,
        identity_args=hubinstall.join_token_identity(kube.node, kube.plane.bootstrap_token),
    )
    hubinstall.wait_until_serving(kube.node)
    return kube


def test_a_fresh_node_joins_with_only_a_bootstrap_token(edge: cluster.Cluster) -> None:
    wait_for("the node to register and be Ready through yurthub", lambda: edge.node_is_ready(NODE), timeout=180)
    client = certs(edge)["client"]
    assert client["source"] == "csr"
    assert client["subject"] == f"CN=system:node:{NODE},O=system:nodes"
    assert not client["expired"]
    mode = edge.node.run(["stat", "-c", "%a %U", CLIENT_FILE, "/var/lib/yurthub/pki"]).stdout.split("\n")
    assert mode[:2] == ["600 root", "700 root"]
    token_id = edge.plane.bootstrap_token.split(".")[0] if edge.plane else ""
    joined = [
        c
        for c in csrs(edge)
        if c["metadata"]["name"].startswith(f"yurthub-client-{NODE}-")
        and c["spec"]["username"] == f"system:bootstrap:{token_id}"
    ]
    assert len(joined) == 1, joined  # one join, by the bootstrap token
    assert joined[0]["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    assert approved(joined[0])  # by the stock controller-manager, through kubeadm's RBAC

    shown = edge.node.run(["/opt/yurt-edge/bin/yurthub", "status"]).stdout
    assert f"client certificate (csr): CN=system:node:{NODE},O=system:nodes, valid until" in shown

    edge.kubectl.apply([pod("joined")])
    wait_for("a pod to run on the joined node", lambda: "joined" in running_pods(edge), timeout=120)

    # The serving certificate waits for an approver; the plain port serves meanwhile (the pod above ran).
    wait_for("a serving CSR to be asked for", lambda: bool(certs(edge)["serving"]["pendingCSR"]), timeout=30)
    serving = certs(edge)["serving"]
    assert serving["subject"] is None
    name = serving["pendingCSR"]
    csr = edge.kubectl.get("csr", name)
    assert csr["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
    assert csr["spec"]["username"] == f"system:node:{NODE}"
    assert not approved(csr)  # stock Kubernetes leaves it to yurt-manager or an admin
    assert name in edge.node.journal("yurthub", 200)  # the log names what it waits for
    edge.kubectl.run("certificate", "approve", name)
    wait_for("yurthub to pick up the serving certificate", lambda: bool(certs(edge)["serving"]["subject"]), timeout=30)
    cert = x509.load_pem_x509_certificate(node_file(edge, SERVING_FILE))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ips == {"169.254.2.1", edge.node.settings.address}  # the door and the node IP, not the apiserver's
    assert san.get_values_for_type(x509.DNSName) == []
    assert stat.S_IMODE((edge.node.directory / "upper" / SERVING_FILE.lstrip("/")).stat().st_mode) == 0o600


def test_both_certificates_rotate_under_a_running_watch_that_goes_on(edge: cluster.Cluster) -> None:
    before = certs(edge)
    watcher = (
        "import urllib.request as u\n"
        f"out=open({WATCH_OUT!r},'a',buffering=1)\n"
        "r=u.Request('http://127.0.0.1:10261/api/v1/namespaces/default/services?watch=1&timeoutSeconds=900',"
        "headers={'User-Agent':'e2e-watcher/1'})\n"
        "c=u.urlopen(r,timeout=1200)\nout.write('OPEN\\n')\n"
        "for line in c: out.write(line.decode())\n"
        "out.write('END\\n')\n"
    )
    edge.node.run(["systemd-run", "--unit=e2e-watcher", "python3", "-c", watcher])
    watch_file = edge.node.directory / "state" / WATCH_OUT.lstrip("/")
    wait_for("the watch to open", lambda: watch_file.exists() and "OPEN" in watch_file.read_text(), timeout=30)

    def rotated() -> bool:
        approve_pending_serving(edge)
        now = certs(edge)
        return all(now[k]["rotations"] > before[k]["rotations"] for k in ("client", "serving"))

    wait_for("both certificates to rotate", rotated, timeout=LIFETIME_S + 60, interval=2)
    after = certs(edge)
    assert after["client"]["notAfter"] > before["client"]["notAfter"]
    assert after["serving"]["notAfter"] > before["serving"]["notAfter"]
    renewals = [
        c
        for c in csrs(edge)
        if c["metadata"]["name"].startswith(f"yurthub-client-{NODE}-")
        and c["spec"]["username"] == f"system:node:{NODE}"
    ]
    assert renewals and all(approved(c) for c in renewals)  # renewed with its own identity, approved by the cloud
    assert metric(edge, "yurthub_certificate_rotations_total", "client") >= 1
    assert 0 < metric(edge, "yurthub_certificate_expiry_seconds", "client") <= LIFETIME_S

    edge.kubectl.run("create", "service", "clusterip", "after-rotation", "--tcp=80")
    wait_for(
        "the watch opened before the rotation to see the new Service",
        lambda: "after-rotation" in watch_file.read_text(),
        timeout=30,
    )
    text = watch_file.read_text()
    assert text.count("OPEN") == 1 and "END" not in text  # the same stream, never cut
    assert edge.node.run(["systemctl", "is-active", "e2e-watcher"], check=False).stdout.strip() == "active"
    wait_for("the node to stay Ready", lambda: node_ready(edge.kubectl.get("node", NODE)), timeout=30)


def test_an_expired_certificate_offline_still_serves_the_cache_and_is_renewed_when_the_link_returns(
    edge: cluster.Cluster,
) -> None:
    path = "/api/v1/namespaces/default/services/kubernetes"
    code, body = via_hub(edge, path)
    assert code == 200 and '"kubernetes"' in body
    on_node = containers_on_node(edge)
    assert "joined" in on_node

    edge.node.cut_link()
    wait_for(
        "the client certificate to expire while the node is cut off",
        lambda: bool(certs(edge)["client"]["expired"]),
        timeout=LIFETIME_S + 30,
        interval=2,
    )
    expired_until = certs(edge)["client"]["notAfter"]
    code, body = via_hub(edge, path)
    assert code == 200 and '"kubernetes"' in body, body  # the cache answers, not a 503
    assert edge.node.run(["systemctl", "is-active", "yurthub"], check=False).stdout.strip() == "active"
    assert containers_on_node(edge) == on_node

    restored = datetime.datetime.now(datetime.UTC)
    edge.node.restore_link()
    wait_for("a new client certificate", lambda: not certs(edge)["client"]["expired"], timeout=60, interval=1)
    assert certs(edge)["client"]["notAfter"] > expired_until
    token_id = edge.plane.bootstrap_token.split(".")[0] if edge.plane else ""
    renewed = [
        c
        for c in csrs(edge)
        if c["spec"]["username"] == f"system:bootstrap:{token_id}"
        and datetime.datetime.fromisoformat(c["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        >= restored.replace(microsecond=0)
    ]
    assert renewed, "an expired certificate is renewed with the bootstrap token, as kubelet does"
    wait_for("the node to be Ready again", lambda: node_ready(edge.kubectl.get("node", NODE)), timeout=60)
    assert via_hub(edge, path)[0] == 200
