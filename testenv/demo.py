"""`make demo`: the real local cluster, an edge node going through yurthub, surviving a cut link, kubelet
restart and a power cycle while cut off, then converging; and a clean teardown.

Prints each step and what it saw, so a newcomer can follow what yurt-edge's test cluster is made of.
"""

from __future__ import annotations

import logging
import sys
import time

from testenv import cluster, hubinstall, images, leftovers
from testenv.kubectl import node_ready, wait_for

APP = "demo-hello"


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = cluster.Settings(kwok_nodes=5)
    say("building or finding the reference binaries and the node's Debian root (cached after the first run)")
    started = time.monotonic()
    with cluster.Cluster.start(settings) as kube:
        node = settings.node.name
        say(f"cluster up in {time.monotonic() - started:.0f}s: etcd, kube-apiserver, controller-manager,")
        say(f"scheduler, real node {node} (systemd, containerd and kubelet in its own namespaces)")
        say(f"and {settings.kwok_nodes} kwok nodes")
        print(kube.kubectl.run("get", "nodes", "-o", "wide"), flush=True)

        say(f"deploying {images.BUSYBOX_IMAGE} (packed locally from busybox-static, no registry)")
        kube.kubectl.run(
            "create",
            "deployment",
            APP,
            f"--image={images.BUSYBOX_IMAGE}",
            "--",
            "/bin/sh",
            "-c",
            "while :; do echo tick $(date +%T) from $(hostname); sleep 2; done",
        )
        wait_for("the demo pod to run", lambda: _phase(kube) == "Running", timeout=90)
        pod = _pod(kube)
        say(f"pod {pod['metadata']['name']} runs on {pod['spec']['nodeName']}; its log via kubectl logs:")
        time.sleep(3)
        print(kube.kubectl.run("logs", pod["metadata"]["name"], "--tail=3"), flush=True)

        _install_yurthub(kube, node)
        _offline_tour(kube, node, pod)
        say("tearing everything down")
    left = {kind: found for kind, found in leftovers.find(cluster.cache_dir()).items() if found}
    if left:
        say(f"teardown left something behind: {left}")
        return 1
    say("done: no process, cgroup, link, mount or iptables rule of the demo is left")
    return 0


def _install_yurthub(kube: cluster.Cluster, node: str) -> None:
    if kube.plane is None:
        raise RuntimeError("no control plane")
    say(f"installing yurthub on {node} as a systemd unit and pointing its kubelet at it")
    hubinstall.put_behind_yurthub(
        kube.node,
        server=kube.plane.cloud_server,
        extra_args="--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2",
    )
    wait_for("Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", node)), timeout=60)
    time.sleep(3)
    say("what yurthub on the node has cached so far (`yurthub status`):")
    print(kube.node.run(["/opt/yurt-edge/bin/yurthub", "status"]).stdout, flush=True)


def _offline_tour(kube: cluster.Cluster, node: str, pod: dict) -> None:  # type: ignore[type-arg]
    say(f"cutting {node}'s link to the cloud")
    kube.node.cut_link()
    cut = time.monotonic()
    wait_for("NotReady", lambda: not node_ready(kube.kubectl.get("node", node)), timeout=60)
    say(f"the control plane marked {node} NotReady after {time.monotonic() - cut:.0f}s")
    say(f"offline: restarting kubelet on {node}; yurthub answers it from the cache")
    kube.node.run(["systemctl", "restart", "kubelet"])
    time.sleep(15)
    say("offline: power-cycling the whole node; every container dies and must come back from the cache")
    kube.node.reboot()
    wait_for("the pod back on the node", lambda: _running_on_node(kube), timeout=120)
    say("the pod's container runs again on the rebooted, still disconnected node (containerd's view):")
    print(kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"], check=False).stdout, flush=True)
    print(kube.node.run(["/opt/yurt-edge/bin/yurthub", "status"]).stdout, flush=True)
    say("restoring the link")
    kube.node.restore_link()
    wait_for("Ready", lambda: node_ready(kube.kubectl.get("node", node)), timeout=60)
    after = _pod(kube)
    same = "same" if after["metadata"]["uid"] == pod["metadata"]["uid"] else "a NEW"
    say(f"{node} is Ready again; {same} pod {after['metadata']['name']}; the restarted container's log:")
    print(kube.kubectl.run("logs", after["metadata"]["name"], "--tail=3"), flush=True)


def _pod(kube: cluster.Cluster) -> dict:  # type: ignore[type-arg]
    pods = kube.kubectl.get("pods", "-l", f"app={APP}")["items"]
    return pods[0] if pods else {}


def _running_on_node(kube: cluster.Cluster) -> bool:
    tasks = kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"], check=False).stdout.splitlines()[1:]
    return sum(1 for line in tasks if line.split()[-1] == "RUNNING") >= 2  # the pod's sandbox and container


def _phase(kube: cluster.Cluster) -> str:
    return str(_pod(kube).get("status", {}).get("phase", ""))


if __name__ == "__main__":
    sys.exit(main())
