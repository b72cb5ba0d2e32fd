"""yurthub against the direct path, measured in the same run on the real local cluster.

Every figure that compares is a pair taken together: direct to kube-apiserver, and the same request
through yurthub (online), and through yurthub with the cloud frozen (offline: the apiserver process is
stopped with SIGSTOP, so connections hang exactly like a dead link). Clients keep their connections alive,
as kubelet does, so TLS handshakes are not what is measured.

The same cluster then runs the hostile soak (`bench.yurthub_soak`, on a hub of its own): its figures compare
yurthub with itself, before and after, and a kubelet-shaped client quiet and during the soak.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import yurthub_soak
from testenv import cluster, hosthub, hubinstall, images
from testenv.kubectl import wait_for
from yurthub import storage, wire

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/bench"
PB = "application/vnd.kubernetes.protobuf"
NODE = "bench-node"
PODS = 1000
CONFIGMAPS = 10_000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class Client:
    """One kept-alive connection, the way a node component holds one."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None = None) -> None:
        self.conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, port, context=context, timeout=30)
            if context
            else http.client.HTTPConnection(host, port, timeout=30)
        )

    def get(self, path: str, accept: str = PB) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Accept": accept, "User-Agent": KUBELET})
        resp = self.conn.getresponse()
        body = resp.read()
        return resp.status, body, (time.perf_counter() - start) * 1000


def pods(n: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "bench", "labels": {"app": "bench", "index": str(i)}},
            "spec": {
                "nodeName": NODE,
                "containers": [
                    {
                        "name": "c",
                        "image": images.BUSYBOX_IMAGE,
                        "command": ["sleep", "3600"],
                        "env": [{"name": "INDEX", "value": str(i)}],
                    }
                ],
            },
        }
        for i in range(n)
    ]


def apply_in_chunks(kube: cluster.Cluster, objects: list[dict[str, Any]], chunk: int = 500) -> None:
    for i in range(0, len(objects), chunk):
        kube.kubectl.run(
            "create",
            "-f",
            "-",
            timeout=300,
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects[i : i + chunk]}),
        )


def start_yurthub(kube: cluster.Cluster, directory: Path) -> tuple[hosthub.HostHub, int, int, ssl.SSLContext]:
    plane = kube.plane
    assert plane is not None
    hub = hosthub.start(plane, plane.server, NODE, directory, "--cache-agents=kubelet")
    context = ssl.create_default_context(cafile=str(plane.directory / "pki" / "ca.crt"))
    context.load_cert_chain(str(hub.cert), str(hub.key))
    return hub, int(hub.proxy.rsplit(":", 1)[1]), int(hub.serve.rsplit(":", 1)[1]), context


def cloud_reachable(serve_port: int) -> bool:
    return bool(json.loads(Client("127.0.0.1", serve_port).get("/v1/status", "*/*")[1])["cloud"]["reachable"])


def measure_requests(kube: cluster.Cluster, directory: Path) -> dict[str, float]:
    plane = kube.plane
    assert plane is not None
    kube.kubectl.run("create", "namespace", "bench")
    kube.kubectl.apply(
        [
            # the pods' account, made here: the controller-manager makes it too, but maybe after the pods come
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "bench"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "bench-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}],
            },
        ]
    )
    # `view` is an aggregated role: its rules appear once the controller-manager's aggregation ran
    wait_for("the view role's rules", lambda: bool(kube.kubectl.get("clusterrole", "view").get("rules")), timeout=60)
    apply_in_chunks(kube, pods(PODS))
    hub_proc, proxy_port, serve_port, context = start_yurthub(kube, directory)
    api_port = int(plane.server.rsplit(":", 1)[1])
    direct, hub = Client("127.0.0.1", api_port, context), Client("127.0.0.1", proxy_port)
    results: dict[str, float] = {}
    try:
        list_path = "/api/v1/namespaces/bench/pods"
        get_path = "/api/v1/namespaces/bench/pods/p7"
        for client in (direct, hub):  # warm both paths and fill the cache
            for path in (list_path, get_path):
                status, body, _ = client.get(path)
                assert status == 200, f"GET {path}: {status} {body[:300]!r}"
        d_list, h_list, get_added = [], [], []
        for _ in range(40):
            d_list.append(direct.get(list_path)[2])
            h_list.append(hub.get(list_path)[2])
        for _ in range(300):
            d, h = direct.get(get_path)[2], hub.get(get_path)[2]
            get_added.append(h - d)
        results |= {
            "list_1k_pods_direct_p50_ms": pct(d_list, 0.5),
            "list_1k_pods_direct_p99_ms": pct(d_list, 0.99),
            "list_1k_pods_online_p50_ms": pct(h_list, 0.5),
            "list_1k_pods_online_p99_ms": pct(h_list, 0.99),
            "get_added_latency_p50_ms": pct(get_added, 0.5),
            "get_added_latency_p99_ms": pct(get_added, 0.99),
        }
        results["list_1k_pods_online_overhead_ratio"] = round(
            results["list_1k_pods_online_p50_ms"] / results["list_1k_pods_direct_p50_ms"], 3
        )
        results["watch_event_added_latency_p50_ms"] = watch_added_latency(kube, api_port, proxy_port, context)
        apiserver = next(p for p in plane.processes if p.name == "kube-apiserver")
        os.kill(apiserver.pid, signal.SIGSTOP)
        try:
            wait_for("yurthub to notice the frozen cloud", lambda: not cloud_reachable(serve_port), timeout=30)
            offline = Client("127.0.0.1", proxy_port)
            o_list = []
            for _ in range(40):
                status, _, ms = offline.get(list_path)
                assert status == 200
                o_list.append(ms)
        finally:
            os.kill(apiserver.pid, signal.SIGCONT)
        results["list_1k_pods_offline_p50_ms"] = pct(o_list, 0.5)
        results["list_1k_pods_offline_p99_ms"] = pct(o_list, 0.99)
        wait_for("the cloud back", lambda: cloud_reachable(serve_port), timeout=30)
        results["rss_mb_idle_10k_objects"] = rss_with_objects(kube, proxy_port, hub_proc.proc.pid)
    finally:
        hub_proc.stop()
    return results


def watch_added_latency(kube: cluster.Cluster, api_port: int, proxy_port: int, context: ssl.SSLContext) -> float:
    """Patch a pod repeatedly; the same event arrives on a direct watch and on one through yurthub."""
    arrivals: dict[str, dict[str, float]] = {"direct": {}, "hub": {}}
    path = "/api/v1/namespaces/bench/pods?watch=1&fieldSelector=metadata.name%3Dp1&allowWatchBookmarks=false"

    def watch(name: str, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": KUBELET})
        resp = conn.getresponse()
        while line := resp.readline():
            event = json.loads(line)
            rv = event["object"]["metadata"]["resourceVersion"]
            arrivals[name].setdefault(rv, time.perf_counter())

    conns = {
        "direct": http.client.HTTPSConnection("127.0.0.1", api_port, context=context, timeout=60),
        "hub": http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=60),
    }
    threads = [threading.Thread(target=watch, args=(n, c), daemon=True) for n, c in conns.items()]
    for t in threads:
        t.start()
    time.sleep(1)
    for i in range(60):
        kube.kubectl.run("label", "pod", "p1", "-n", "bench", f"round={i}", "--overwrite")
    time.sleep(2)
    for c in conns.values():
        if c.sock:
            c.sock.shutdown(2)
    added = [arrivals["hub"][rv] - t for rv, t in arrivals["direct"].items() if rv in arrivals["hub"]]
    return pct([a * 1000 for a in added], 0.5)


def rss_with_objects(kube: cluster.Cluster, proxy_port: int, pid: int) -> float:
    configmaps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm{i}", "namespace": "bench"},
            "data": {"key": f"value-{i}"},
        }
        for i in range(CONFIGMAPS)
    ]
    apply_in_chunks(kube, configmaps, chunk=1000)
    hub = Client("127.0.0.1", proxy_port)
    status, body, _ = hub.get("/api/v1/namespaces/bench/configmaps")
    assert status == 200 and len(wire.parse_list(wire.Encoding.PROTOBUF, body).items) > CONFIGMAPS  # + kube-root-ca.crt
    time.sleep(5)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def cache_events_per_s() -> float:
    """Watch events persisted per second by the SQLite cache on one writer thread (batches of 100)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = storage.SqliteStorage(Path(tmp))
        scope = storage.Scope("kubelet", wire.Encoding.PROTOBUF, "pods.v1.core")
        key = storage.ViewKey(scope, "bench")
        payload = b"x" * 2000  # about the size of a pod in protobuf

        def meta(name: str, rv: str) -> bytes:
            return wire.bytes_field(1, name.encode()) + wire.bytes_field(3, b"bench") + wire.bytes_field(6, rv.encode())

        batches = []
        rv = 1
        for b in range(100):
            events = []
            for i in range(100):
                rv += 1
                raw = wire.bytes_field(1, meta(f"p{(b * 100 + i) % 1000}", str(rv))) + wire.bytes_field(2, payload)
                body = wire.wrap("v1", "Pod", raw)
                events.append(wire.Event("MODIFIED", wire.Obj("bench", f"p{(b * 100 + i) % 1000}", str(rv), body)))
            batches.append(events)
        start = time.perf_counter()
        for events in batches:
            store.apply_events(key, events)
        elapsed = time.perf_counter() - start
        store.close()
        return round(10_000 / elapsed)


def node_restart(offline: bool) -> float:
    """Seconds from a node's power-on to all its pods' containers running again (online or cut off)."""
    with cluster.Cluster.start(cluster.Settings()) as kube:
        assert kube.plane is not None
        hubinstall.put_behind_yurthub(
            kube.node,
            server=kube.plane.cloud_server,
            extra_args="--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2",
        )
        kube.kubectl.run(
            "create",
            "deployment",
            "restart",
            f"--image={images.BUSYBOX_IMAGE}",
            "--replicas=10",
            "--",
            "sleep",
            "100000",
        )
        wait_for("10 pods", lambda: running_containers(kube) >= 10, timeout=180)
        if offline:
            kube.node.cut_link()
            wait_for(
                "offline",
                lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
                timeout=30,
            )
        # Power off, then time from power on: how long the harness takes to tear a namespace down is not
        # the node's restart time.
        kube.node.stop()
        start = time.monotonic()
        kube.node.start(link_up=not offline)
        wait_for("10 pods back", lambda: running_containers(kube) >= 10, timeout=300, interval=0.25)
        return round(time.monotonic() - start, 1)


def running_containers(kube: cluster.Cluster) -> int:
    """Application containers (not pod sandboxes) whose task is running, as containerd sees them."""
    ctr = ["ctr", "-n", "k8s.io"]
    apps = set(
        kube.node.run(
            [*ctr, "containers", "ls", "-q", 'labels."io.cri-containerd.kind"==container'], check=False
        ).stdout.split()
    )
    tasks = kube.node.run([*ctr, "tasks", "ls"], check=False).stdout.splitlines()[1:]
    return sum(1 for line in tasks if line.split()[0] in apps and line.split()[-1] == "RUNNING")


def run() -> dict[str, object]:
    metrics: dict[str, float] = {}
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as kube, tempfile.TemporaryDirectory() as tmp:
        metrics |= measure_requests(kube, Path(tmp))
        # a hub of its own, in a namespace of its own, after the request figures so it cannot disturb them
        soak = yurthub_soak.measure(kube, Path(tmp) / "soak")
        metrics |= soak["figures"]
    metrics["cache_events_per_s"] = cache_events_per_s()
    metrics["online_node_restart_to_pods_running_s"] = node_restart(offline=False)
    metrics["offline_node_restart_to_pods_running_s"] = node_restart(offline=True)
    metrics["offline_over_online_restart_ratio"] = round(
        metrics["offline_node_restart_to_pods_running_s"] / metrics["online_node_restart_to_pods_running_s"], 3
    )
    return {"metrics": metrics, "median": metrics, "hostile_soak": soak["detail"]}
