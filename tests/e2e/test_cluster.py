"""The foundation's promises about the real local cluster, checked from the outside with kubectl."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography import x509

from testenv import cluster
from testenv.kubectl import node_ready, wait_for
from testenv.workloads import deployment

KWOK_NODES = 20


@pytest.fixture(scope="module")
def cluster_settings() -> cluster.Settings:
    return cluster.Settings(kwok_nodes=KWOK_NODES, node_monitor_grace_s=12)


def running_pod(kube: cluster.Cluster, app: str) -> dict[str, Any]:
    pods = kube.kubectl.get("pods", "-n", "default", "-l", f"app={app}")["items"]
    assert len(pods) == 1, f"expected one pod of {app}, found {[p['metadata']['name'] for p in pods]}"
    return pods[0]


@pytest.fixture(scope="module")
def hello(kube: cluster.Cluster) -> dict[str, Any]:
    """A Deployment of the local busybox image whose one pod says hello and sleeps; its running pod."""
    kube.kubectl.apply([deployment("hello", "echo hello from $(hostname); exec sleep 100000")])

    def running() -> bool:
        pods = kube.kubectl.get("pods", "-n", "default", "-l", "app=hello")["items"]
        return len(pods) == 1 and pods[0]["status"].get("phase") == "Running"

    wait_for("the hello pod to run", running, timeout=90)
    return running_pod(kube, "hello")


def test_deployment_runs_on_the_real_node_and_its_logs_are_readable(
    kube: cluster.Cluster, hello: dict[str, Any]
) -> None:
    pod = hello
    assert pod["spec"]["nodeName"] == kube.settings.node.name  # kwok nodes are tainted; the scheduler chose
    wait_for(
        "the pod's output",
        lambda: "hello from" in kube.kubectl.run("logs", "-n", "default", pod["metadata"]["name"]),
        timeout=30,
    )
    assert kube.kubectl.run("logs", "-n", "default", pod["metadata"]["name"]).strip() == (
        f"hello from {pod['metadata']['name']}"
    )


def test_kubelet_client_certificate_came_from_a_csr_signed_by_the_controller_manager(
    kube: cluster.Cluster,
) -> None:
    name = kube.settings.node.name
    csrs = kube.kubectl.get("csr")["items"]
    mine = [
        c
        for c in csrs
        if c["spec"]["username"].startswith("system:bootstrap:")
        and c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    ]
    assert mine, f"no kubelet bootstrap CSR among {[c['metadata']['name'] for c in csrs]}"
    csr = mine[0]
    conditions = {c["type"]: c for c in csr["status"]["conditions"]}
    assert conditions["Approved"]["status"] == "True"
    assert conditions["Approved"]["reason"] == "AutoApproved"  # by kube-controller-manager's csrapproving
    issued = x509.load_pem_x509_certificate(base64.b64decode(csr["status"]["certificate"]))
    assert issued.subject.rfc4514_string() == f"CN=system:node:{name},O=system:nodes"
    ca = x509.load_pem_x509_certificate(kube.plane.ca.pair.cert_pem)  # type: ignore[union-attr]
    assert issued.issuer == ca.subject
    # And it is the certificate the kubelet on the node is using now.
    current = kube.node.run(["cat", "/var/lib/kubelet/pki/kubelet-client-current.pem"]).stdout
    assert x509.load_pem_x509_certificate(current.encode()).serial_number == issued.serial_number


def test_kwok_nodes_are_ready(kube: cluster.Cluster) -> None:
    nodes = kube.kubectl.get("nodes", "-l", "type=kwok")["items"]
    assert len(nodes) == KWOK_NODES
    assert all(node_ready(n) for n in nodes), [n["metadata"]["name"] for n in nodes if not node_ready(n)]


def test_cutting_the_cloud_link_makes_the_node_not_ready_and_restoring_it_recovers_without_restarts(
    kube: cluster.Cluster, hello: dict[str, Any]
) -> None:
    name = kube.settings.node.name
    pod = running_pod(kube, "hello")
    container_id = pod["status"]["containerStatuses"][0]["containerID"]

    kube.node.cut_link()
    cut_at = time.monotonic()
    try:
        wait_for(
            f"{name} to go NotReady",
            lambda: not node_ready(kube.kubectl.get("node", name)),
            timeout=kube.settings.node_monitor_grace_s + 30,
        )
        took = time.monotonic() - cut_at
    finally:
        kube.node.restore_link()
    wait_for(f"{name} to be Ready again", lambda: node_ready(kube.kubectl.get("node", name)), timeout=60)
    assert took >= kube.settings.node_monitor_grace_s - 5, f"NotReady after {took:.1f}s: before the grace?"

    def pod_reports_ready() -> bool:
        status = running_pod(kube, "hello")["status"]
        return all(c.get("ready") for c in status.get("containerStatuses", []))

    wait_for("the pod to be reported ready again", pod_reports_ready, timeout=60)
    after = running_pod(kube, "hello")
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["containerID"] == container_id
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0


def test_behind_nat_switch_blocks_the_cloud_dialling_in_but_not_the_node_dialling_out(
    kube: cluster.Cluster, hello: dict[str, Any]
) -> None:
    name = kube.settings.node.name
    pod = hello["metadata"]["name"]
    assert "hello from" in kube.kubectl.run("logs", pod)  # an apiserver-to-kubelet connection is open now
    kube.node.set_reachable_from_cloud(False)
    try:
        # kubectl logs makes the apiserver open a connection to the kubelet (10250): that must now fail...
        result = kube.kubectl.run("logs", pod, "--request-timeout=5s", check=False, timeout=30)
        assert "hello from" not in result
        # ...while the kubelet's own connections to the apiserver keep the node Ready past the grace period.
        time.sleep(kube.settings.node_monitor_grace_s + 4)
        assert node_ready(kube.kubectl.get("node", name))
    finally:
        kube.node.set_reachable_from_cloud(True)
    assert "hello from" in kube.kubectl.run("logs", pod)
