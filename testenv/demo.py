"""`make demo`: the real local cluster with its edge node behind NAT, reached by the cloud only through the
tunnel; the node going through yurthub, surviving a cut link, kubelet restart and a power cycle while cut off,
then converging; and a clean teardown.

Prints each step and what it saw, so a newcomer can follow what yurt-edge's test cluster is made of.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from testenv import cluster, controlplane, hubinstall, images, leftovers, pki, tunnelhost, tunnelinstall
from testenv.kubectl import node_ready, wait_for

APP = "demo-hello"


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="yurt-edge-demo-"))
    tunnel_ca = pki.CertificateAuthority("yurt-edge-demo-tunnel-ca")
    node_settings = dataclasses.replace(cluster.Settings().node, reachable_from_cloud=False)
    certs = tunnelhost.issue(tunnel_ca, workdir / "pki", addresses=("127.0.0.1", node_settings.cloud_address))
    connect_port = controlplane.free_port()
    settings = cluster.Settings(
        kwok_nodes=5, node=node_settings, egress_selector_config=tunnelhost.egress_selector(certs, connect_port)
    )
    say("building or finding the reference binaries and the node's Debian root (cached after the first run)")
    started = time.monotonic()
    with cluster.Cluster.start(settings) as kube:
        node = settings.node.name
        say(f"cluster up in {time.monotonic() - started:.0f}s: etcd, kube-apiserver, controller-manager,")
        say(f"scheduler, real node {node} (systemd, containerd and kubelet in its own namespaces)")
        say(f"and {settings.kwok_nodes} kwok nodes")
        print(kube.kubectl.run("get", "nodes", "-o", "wide"), flush=True)
        server = _install_tunnel(kube, certs, tunnel_ca, connect_port, workdir)

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
        say(f"pod {pod['metadata']['name']} runs on {pod['spec']['nodeName']}; its log via kubectl logs (tunnel):")
        time.sleep(3)
        print(kube.kubectl.run("logs", pod["metadata"]["name"], "--tail=3"), flush=True)

        _install_yurthub(kube, node)
        _offline_tour(kube, node, pod)
        say("the tunnel server's view (`yurt-tunnel-server status`):")
        print(json.dumps(server.status()["agents"], indent=2), flush=True)
        server.stop()
        say("tearing everything down")
    shutil.rmtree(workdir, ignore_errors=True)
    left = {kind: found for kind, found in leftovers.find(cluster.cache_dir()).items() if found}
    if left:
        say(f"teardown left something behind: {left}")
        return 1
    say("done: no process, cgroup, link, mount or iptables rule of the demo is left")
    return 0


def _install_tunnel(
    kube: cluster.Cluster, certs: tunnelhost.Certs, ca: pki.CertificateAuthority, connect_port: int, workdir: Path
) -> tunnelhost.Server:
    if kube.plane is None:
        raise RuntimeError("no control plane")
    node = kube.settings.node
    say(f"{node.name} is behind NAT: the cloud cannot open a connection to its kubelet at {node.address}:10250")
    say("starting yurt-tunnel-server beside the apiserver (its egress selector sends kubelet traffic there)")
    kube.kubectl.run("label", "node", node.name, "openyurt.io/is-edge-worker=true")
    server = tunnelhost.server(
        certs,
        workdir,
        "tunnel-0",
        connect_port=connect_port,
        agent_ca=kube.plane.directory / "pki" / "ca.crt",
        kubeconfig=kube.plane.admin_kubeconfig,
    )
    say(f"installing yurt-tunnel-agent on {node.name} as a systemd unit; it dials out with kubelet's certificate")
    tunnelinstall.install_agent(
        kube.node, ca_pem=ca.pair.cert_pem, servers=[f"{node.cloud_address}:{server.agent_port}"]
    )
    wait_for("the agent to join", lambda: bool(server.status()["agents"]), timeout=60)
    return server


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
    say(f"{node} is Ready again; {same} pod {after['metadata']['name']}; the restarted container's log,")
    say("through the tunnel the agent re-established by itself:")
    wait_for("logs through the tunnel", lambda: bool(kube.kubectl.run("logs", after["metadata"]["name"])), timeout=60)
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
