"""`make demo`: bring up the real local cluster, show an edge node at work, cut its link, tear down.

Prints each step and what it saw, so a newcomer can follow what yurt-edge's test cluster is made of.
"""

from __future__ import annotations

import logging
import sys
import time

from testenv import cluster, images, leftovers
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

        say(f"cutting {node}'s link to the cloud")
        kube.node.cut_link()
        cut = time.monotonic()
        wait_for("NotReady", lambda: not node_ready(kube.kubectl.get("node", node)), timeout=60)
        say(f"the control plane marked {node} NotReady after {time.monotonic() - cut:.0f}s")
        say("meanwhile its containers keep running on the node (containerd's view):")
        print(kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"], check=False).stdout, flush=True)
        say("restoring the link")
        kube.node.restore_link()
        wait_for("Ready", lambda: node_ready(kube.kubectl.get("node", node)), timeout=60)
        after = _pod(kube)
        restarts = after["status"]["containerStatuses"][0]["restartCount"]
        say(f"{node} is Ready again; same pod {after['metadata']['name']}, restarts: {restarts}")
        say("tearing everything down")
    left = {kind: found for kind, found in leftovers.find(cluster.cache_dir()).items() if found}
    if left:
        say(f"teardown left something behind: {left}")
        return 1
    say("done: no process, cgroup, link, mount or iptables rule of the demo is left")
    return 0


def _pod(kube: cluster.Cluster) -> dict:  # type: ignore[type-arg]
    pods = kube.kubectl.get("pods", "-l", f"app={APP}")["items"]
    return pods[0] if pods else {}


def _phase(kube: cluster.Cluster) -> str:
    return str(_pod(kube).get("status", {}).get("phase", ""))


if __name__ == "__main__":
    sys.exit(main())
