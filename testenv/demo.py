"""`make demo`: a stock Kubernetes cluster (the real node plus kwok nodes) turned into an edge cluster with
one `yurtctl convert --tunnel`; the edge node then put behind NAT and still reached through the tunnel; the
node going through yurthub, kube-proxy and CoreDNS on it (kubeadm's way) and a web Service answering a client
on the node by name before, during and after a cut link; the node surviving a kubelet restart and a power
cycle while cut off, then converging; `yurtctl revert` back to the stock cluster; and a clean teardown.

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

from testenv import (
    cluster,
    controlplane,
    converterimage,
    edgeconvert,
    images,
    leftovers,
    pki,
    services,
    tunnelhost,
    webshop,
    yurtmanager,
)
from testenv.kubectl import KubectlError, node_ready, wait_for

APP = "demo-hello"
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 " + services.DOOR_ARGS


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="yurt-edge-demo-"))
    certs = edgeconvert.issue_certs(pki.CertificateAuthority("yurt-edge-demo-tunnel-ca"), workdir / "pki")
    connect_port = controlplane.free_port()
    node_settings = dataclasses.replace(cluster.Settings().node, reachable_from_cloud=False)
    settings = cluster.Settings(
        kwok_nodes=5,
        node=node_settings,
        services=True,
        egress_selector_config=tunnelhost.egress_selector(certs, connect_port),
    )
    say("building or finding the reference binaries and the node's Debian root (cached after the first run)")
    started = time.monotonic()
    with cluster.Cluster.start(settings) as kube:
        if kube.plane is None:
            raise RuntimeError("no control plane")
        node = settings.node.name
        say(f"cluster up in {time.monotonic() - started:.0f}s: etcd, kube-apiserver, controller-manager,")
        say(f"scheduler, real node {node} (systemd, containerd and kubelet in its own namespaces)")
        say(f"and {settings.kwok_nodes} kwok nodes: a stock cluster")
        print(kube.kubectl.run("get", "nodes", "-o", "wide"), flush=True)
        say(f"{node} is behind NAT: it dials out, but nothing in the cloud can open a connection to it")
        say("starting yurt-tunnel-server beside kube-apiserver, whose egress selector sends kubelet traffic to it;")
        say("until a node is an edge node with an agent the server dials it directly, which NAT does not let through")
        server = tunnelhost.server(
            certs,
            workdir / "tunnel",
            "tunnel-0",
            connect_port=connect_port,
            agent_ca=kube.plane.directory / "pki" / "ca.crt",
            kubeconfig=kube.plane.admin_kubeconfig,
        )
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
        say(f"pod {pod['metadata']['name']} runs on {pod['spec']['nodeName']}, but kubectl logs cannot reach it:")
        try:
            kube.kubectl.run("logs", pod["metadata"]["name"], "--tail=3", timeout=30)
        except KubectlError as exc:
            print(str(exc).rsplit(": ", 1)[-1], flush=True)

        manager = _convert(kube, server, certs, workdir)
        say("kubectl logs now goes through the tunnel edge-1's agent dialled out:")
        wait_for("logs through the tunnel", lambda: bool(_logs(kube, pod)), timeout=60)
        print(_logs(kube, pod), flush=True)
        _services(kube, node)
        _offline_tour(kube, node, pod)
        say("the tunnel server's view (`yurt-tunnel-server status`):")
        print(json.dumps(server.status()["agents"], indent=2), flush=True)
        _revert(kube, manager)
        server.stop()
        say("tearing everything down")
    shutil.rmtree(workdir, ignore_errors=True)
    left = {kind: found for kind, found in leftovers.find(cluster.cache_dir()).items() if found}
    if left:
        say(f"teardown left something behind: {left}")
        return 1
    say("done: no process, cgroup, link, mount or iptables rule of the demo is left")
    return 0


def _yurtctl(kube: cluster.Cluster, *args: str) -> None:
    say(f"$ yurtctl {' '.join(a for a in args if not a.startswith(('--helm', '--tunnel-values')))}")
    result = edgeconvert.yurtctl(kube, *args)
    print(result.stdout + result.stderr, flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"yurtctl {args[0]} exited {result.returncode}")


def _convert(
    kube: cluster.Cluster, server: tunnelhost.Server, certs: tunnelhost.Certs, workdir: Path
) -> yurtmanager.HostManager:
    if kube.plane is None:
        raise RuntimeError("no control plane")
    say("packing the image of yurtctl's node Jobs (busybox and yurt-edge's executable) into the node's containerd")
    converterimage.load(kube.node, converterimage.build(cluster.cache_dir() / "images"))
    say("the operator's part: the tunnel's certificate as a Secret, yurt-manager beside the control plane,")
    say("and a serving certificate for yurthub's HTTPS door, through which pods reach the API")
    services.door_certificate(kube)
    values = edgeconvert.prepare(kube, certs, workdir)
    manager = yurtmanager.start(yurtmanager.own_kubeconfig(kube.plane, workdir), workdir, "demo-manager")
    cloud = [f"kwok-{i}" for i in range(kube.settings.kwok_nodes)]
    args = edgeconvert.convert_args(kube, server, values, converterimage.IMAGE, cloud, HUB_ARGS)
    _yurtctl(kube, *args)
    say(f"{kube.settings.node.name} now goes through yurthub; what it has cached (`yurthub status`):")
    wait_for("Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", kube.settings.node.name)), timeout=60)
    print(kube.node.run(["/opt/yurt-edge/bin/yurthub", "status"]).stdout, flush=True)
    return manager


def _logs(kube: cluster.Cluster, pod: dict) -> str:  # type: ignore[type-arg]
    try:
        return kube.kubectl.run("logs", pod["metadata"]["name"], "--tail=3", timeout=30)
    except KubectlError:
        return ""


def _revert(kube: cluster.Cluster, manager: yurtmanager.HostManager) -> None:
    _yurtctl(kube, "revert", *edgeconvert.common_args(converterimage.IMAGE))  # yurt-manager reverts the node
    manager.stop()
    say("a stock cluster again:")
    print(kube.kubectl.run("get", "nodes", "-L", "openyurt.io/is-edge-worker"), flush=True)


def _services(kube: cluster.Cluster, node: str) -> None:
    say("kube-proxy (kubeadm's DaemonSet, iptables mode, its kubeconfig at yurthub's door with its own token) and")
    say("CoreDNS (kubeadm's Deployment, in-cluster config through yurthub's door with its own token)")
    services.install(kube, node)
    say(f"a web Service (2 busybox httpd pods) and a client pod on {node} fetching")
    say(f"http://{webshop.WEB_NAME}/ and the ClusterIP once a second")
    webshop.deploy(kube, node)
    _fetches(kube, "online", time.time(), 5)


def _fetches(kube: cluster.Cluster, when: str, start: float, count: int) -> None:
    """Print the client's next `count` rounds from `start` (read from kubelet's log files on the node)."""
    rounds = webshop.wait_for_rounds(kube, start, count, timeout=180)
    answered = sum(r.by_name for r in rounds)
    say(f"{when}: {answered} of {len(rounds)} fetches answered by name, {sum(r.by_ip for r in rounds)} by ClusterIP:")
    for r in rounds:
        stamp = time.strftime("%H:%M:%S", time.localtime(r.at))
        print(f"    {stamp} by name {'ok' if r.by_name else 'FAILED'}, by ClusterIP {'ok' if r.by_ip else 'FAILED'}")


def _offline_tour(kube: cluster.Cluster, node: str, pod: dict) -> None:  # type: ignore[type-arg]
    say(f"cutting {node}'s link to the cloud")
    kube.node.cut_link()
    cut = time.monotonic()
    cut_at = time.time()
    wait_for("NotReady", lambda: not node_ready(kube.kubectl.get("node", node)), timeout=60)
    say(f"the control plane marked {node} NotReady after {time.monotonic() - cut:.0f}s")
    say("offline, the Service still answers: CoreDNS and kube-proxy read their Services from yurthub's cache")
    _fetches(kube, "offline", max(cut_at, time.time() - 2), 10)
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
    wait_for(
        "the web pods back in their Service", lambda: webshop.web_endpoints_ready_in_cloud(kube, node) == 2, timeout=120
    )
    wait_for("kube-proxy to send web and kube-dns to their pods", lambda: webshop.served_on_node(kube), timeout=60)
    _fetches(kube, "after the outage", time.time(), 5)
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
    """Whether the demo pod's sandbox and container run (the only pod in `default`; the node runs others)."""
    ctr = ["ctr", "-n", "k8s.io"]
    mine = kube.node.run([*ctr, "containers", "ls", "-q", 'labels."io.kubernetes.pod.namespace"==default'], check=False)
    tasks = kube.node.run([*ctr, "tasks", "ls"], check=False).stdout.splitlines()[1:]
    running = {line.split()[0] for line in tasks if line.split()[-1] == "RUNNING"}
    return len(running & set(mine.stdout.split())) >= 2


def _phase(kube: cluster.Cluster) -> str:
    return str(_pod(kube).get("status", {}).get("phase", ""))


if __name__ == "__main__":
    sys.exit(main())
