"""yurthub on the real edge node, as a systemd unit, with the real kubelet going through it.

One cluster for the module; the offline scenario runs as one test because each step builds on the last:
cut the link, keep running, restart kubelet, restart yurthub, reboot the node, delete a pod in the cloud,
restore the link, converge.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testenv import cluster, hubinstall, images
from testenv.kubectl import node_ready, wait_for

OFFLINE_AT_LEAST_S = 150
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1"


@pytest.fixture(scope="module")
def edge(kube: cluster.Cluster) -> Iterator[cluster.Cluster]:
    assert kube.plane is not None
    hubinstall.put_behind_yurthub(kube.node, server=kube.plane.cloud_server, extra_args=HUB_ARGS)
    wait_for(
        "kubelet requests through yurthub", lambda: hubinstall.kubelet_requests_forwarded(kube.node) > 0, timeout=60
    )
    wait_for("the node to be Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", "edge-1")), timeout=60)
    kube.kubectl.run("create", "configmap", "app-config", "--from-literal=greeting=hello")
    kube.kubectl.run("create", "secret", "generic", "app-secret", "--from-literal=token=s3cret")
    kube.kubectl.apply([app_deployment(), pod("victim")])
    wait_for("the app pods and the victim to run", lambda: len(running_pods(kube)) == 3, timeout=120)
    yield kube


def app_deployment() -> dict[str, Any]:
    labels = {"app": "app"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "main",
                            "image": images.BUSYBOX_IMAGE,
                            "command": [
                                "/bin/sh",
                                "-c",
                                "echo $(cat /cfg/greeting) $(cat /sec/token); exec sleep 100000",
                            ],
                            "volumeMounts": [
                                {"name": "cfg", "mountPath": "/cfg"},
                                {"name": "sec", "mountPath": "/sec"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "app-config"}},
                        {"name": "sec", "secret": {"secretName": "app-secret"}},
                    ],
                },
            },
        },
    }


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": images.BUSYBOX_IMAGE, "command": ["sleep", "100000"]}],
        },
    }


def running_pods(kube: cluster.Cluster) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["name"]: p
        for p in kube.kubectl.get("pods", "-n", "default")["items"]
        if p["status"].get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", [{}]))
    }


def containers_on_node(kube: cluster.Cluster) -> dict[str, str]:
    """Running application containers on the node, as containerd sees them: pod name -> container id."""
    running = {
        line.split()[0]
        for line in kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"]).stdout.splitlines()[1:]
        if line.split()[-1] == "RUNNING"
    }
    found = {}
    for cid in running:
        info = json.loads(kube.node.run(["ctr", "-n", "k8s.io", "containers", "info", cid]).stdout)
        labels = info.get("Labels") or {}
        if labels.get("io.kubernetes.container.name") == "main":
            found[labels["io.kubernetes.pod.name"]] = cid
    return found


def hub_status(kube: cluster.Cluster) -> dict[str, Any]:
    return hubinstall.yurthub_status(kube.node)  # type: ignore[return-value]


def test_online_the_node_works_through_yurthub(edge: cluster.Cluster) -> None:
    assert node_ready(edge.kubectl.get("node", "edge-1"))
    app = [n for n in running_pods(edge) if n.startswith("app-")]
    assert len(app) == 2
    assert edge.kubectl.run("logs", app[0]).strip() == "hello s3cret"  # ConfigMap and Secret volumes mounted
    edge.kubectl.apply([pod("ephemeral")])
    wait_for("the ephemeral pod to run", lambda: "ephemeral" in containers_on_node(edge), timeout=60)
    edge.kubectl.run("delete", "pod", "ephemeral", "--wait=true", timeout=90)
    wait_for("the ephemeral pod to leave the node", lambda: "ephemeral" not in containers_on_node(edge), timeout=60)
    entries = {(e["component"], e["gvr"], e["encoding"]) for e in hub_status(edge)["cache"]["entries"]}
    for gvr in ("nodes.v1.core", "configmaps.v1.core", "secrets.v1.core", "services.v1.core"):
        assert ("kubelet", gvr, "protobuf") in entries, entries  # kubelet speaks protobuf, kept as such
    # except its pods: read as JSON, the one encoding an offline status patch can be applied to
    assert ("kubelet", "pods.v1.core", "json") in entries, entries


def test_offline_the_node_keeps_its_pods_through_restarts_and_converges_when_back(edge: cluster.Cluster) -> None:
    before = running_pods(edge)
    app = sorted(n for n in before if n.startswith("app-"))
    uids = {n: before[n]["metadata"]["uid"] for n in app}
    on_node = containers_on_node(edge)
    assert set(app) <= set(on_node)

    edge.node.cut_link()
    cut_at, cut_wall = time.monotonic(), datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    wait_for("yurthub to see the cloud gone", lambda: not hub_status(edge)["cloud"]["reachable"], timeout=30)
    time.sleep(20)
    assert containers_on_node(edge) == on_node  # same containers, none restarted

    edge.node.run(["systemctl", "restart", "kubelet"])
    time.sleep(25)
    assert containers_on_node(edge) == on_node, "kubelet restarted offline must keep every pod"

    edge.node.run(["systemctl", "restart", "yurthub"])
    hubinstall.wait_until_serving(edge.node)
    time.sleep(15)
    assert containers_on_node(edge) == on_node, "yurthub restarted offline must not disturb pods"

    edge.kubectl.run("delete", "pod", "victim", "--wait=false")  # in the cloud, while the node cannot hear it

    edge.node.reboot()  # every process dies, containers included; the node boots from its disk, still cut off
    hubinstall.wait_until_serving(edge.node)
    wait_for(
        "every pod to come back on the rebooted node from the cache",
        lambda: set(app) | {"victim"} <= set(containers_on_node(edge)),
        timeout=180,
    )
    for name in app:
        logs = edge.node.run(["sh", "-c", f"cat /var/log/pods/default_{name}_*/main/*.log"]).stdout
        assert logs.count("hello s3cret") >= 2, logs  # restarted with its ConfigMap and Secret from the cache
    assert not hub_status(edge)["cloud"]["reachable"]
    queued = hub_status(edge)["outbox"]["depth"]
    assert queued > 0, "kubelet's events while offline belong in the outbox"

    time.sleep(max(0.0, OFFLINE_AT_LEAST_S - (time.monotonic() - cut_at)))
    restored_wall = datetime.datetime.now(datetime.UTC)
    edge.node.restore_link()
    wait_for("the node to be Ready again", lambda: node_ready(edge.kubectl.get("node", "edge-1")), timeout=40)

    after = edge.kubectl.get("pods", "-n", "default", "-l", "app=app")["items"]
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in after} == uids  # no pod recreated
    wait_for(
        "the pod deleted in the cloud to leave the node", lambda: "victim" not in containers_on_node(edge), timeout=90
    )
    wait_for("the outbox to drain", lambda: hub_status(edge)["outbox"]["depth"] == 0, timeout=60)
    events = edge.kubectl.get("events", "-n", "default")["items"]
    offline_events = [
        e for e in events if e.get("source", {}).get("host") == "edge-1" and cut_wall <= stamp(e) <= restored_wall
    ]
    assert offline_events, "the events kubelet emitted while offline reached the cloud"
    assert {e["reason"] for e in offline_events} & {"SandboxChanged", "Started", "Created"}


def stamp(event: dict[str, Any]) -> datetime.datetime:
    value = event.get("firstTimestamp") or event.get("eventTime") or "1970-01-01T00:00:00Z"
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).replace(microsecond=0)
