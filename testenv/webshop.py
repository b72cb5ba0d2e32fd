"""A small edge application for Service tests and the demo, and the arithmetic of what its client saw.

In namespace `shop`: a Deployment of 2 busybox httpd pods behind Service `web`, and a client pod on the same
node that fetches `http://web.shop.svc.cluster.local/` and `http://<ClusterIP>/` in turn, about once a
second, and prints one line per round to its log:

    fetch <epoch seconds> name=ok|fail ip=ok|fail

The harness reads those lines from kubelet's own log files on the node's disk (`read_rounds`), so they can be
read while the node is cut off from the cloud, and across container restarts and reboots (each container of
the pod has its own file). `failed_seconds` turns rounds into the seconds the Service did not answer.

Each fetch is cut off by busybox's `timeout`, not wget's own `-T`: Debian's busybox 1.35 wget crashes
(SIGSEGV) whenever `-T` is given, measured on this machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import time
from collections.abc import Iterable
from typing import Any

from testenv import images
from testenv.cluster import Cluster
from testenv.kubectl import wait_for
from testenv.services import DOOR_ARGS, DOOR_IP, DOOR_PORT, endpoints_in_rules, has_rules_for, ready_replicas

NS = "shop"
WEB_NAME = f"web.{NS}.svc.cluster.local"
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1 " + DOOR_ARGS
"""yurthub's flags for the shop's node: its HTTPS door open, and the cloud's loss seen within seconds."""


def web_objects(node: str) -> list[dict[str, Any]]:
    """The namespace, the web Deployment (its pods kept on `node`) and Service `web`."""
    labels = {"app": "web"}
    serve = 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www'
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": node},
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "main",
                                "image": images.BUSYBOX_IMAGE,
                                "command": ["sh", "-c", serve],
                                "ports": [{"name": "http", "containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 2},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        },
    ]


CLIENT_LOOP = """
while :; do
  t=$(date +%s)
  name=ok; timeout 3 wget -q -O /dev/null "http://$WEB_NAME/" || name=fail
  ip=ok; timeout 3 wget -q -O /dev/null "http://$WEB_IP/" || ip=fail
  echo "fetch $t name=$name ip=$ip"
  sleep 1
done
"""


def client_pod(node: str, web_ip: str) -> dict[str, Any]:
    """The client, on `node`, fetching by name and by the Service's ClusterIP `web_ip`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": NS},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": images.BUSYBOX_IMAGE,
                    "command": ["sh", "-c", CLIENT_LOOP],
                    "env": [{"name": "WEB_NAME", "value": WEB_NAME}, {"name": "WEB_IP", "value": web_ip}],
                }
            ],
        },
    }


# --- counting what the client saw ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Round:
    """One round of the client: when it started (epoch seconds) and whether each fetch answered."""

    at: int
    by_name: bool
    by_ip: bool

    @property
    def ok(self) -> bool:
        return self.by_name and self.by_ip


def parse_rounds(lines: Iterable[str]) -> list[Round]:
    """Rounds from the client's log lines (kubelet's CRI format `<time> stdout F <line>`, or bare lines)."""
    found = []
    for line in lines:
        words = line.split()
        if "fetch" not in words:
            continue
        rest = words[words.index("fetch") + 1 :]
        if len(rest) != 3 or not rest[0].isdigit():
            continue  # a line cut short by a kill
        fields = dict(w.split("=", 1) for w in rest[1:] if "=" in w)
        found.append(Round(int(rest[0]), fields.get("name") == "ok", fields.get("ip") == "ok"))
    return sorted(found, key=lambda r: r.at)


def read_rounds(kube: Cluster) -> list[Round]:
    """Every round the client logged, from kubelet's log files of its container on the node's disk (every
    container the pod ever had: a restart or a reboot starts a new file)."""
    logs = kube.node.directory / "state" / "var" / "log" / "pods"
    lines: list[str] = []
    for path in sorted(logs.glob(f"{NS}_client_*/main/*.log")):
        lines += path.read_text(errors="replace").splitlines()
    return parse_rounds(lines)


def rounds_since(kube: Cluster, start: float, end: float | None = None) -> list[Round]:
    return between(read_rounds(kube), start, end)


def between(rounds: list[Round], start: float, end: float | None = None) -> list[Round]:
    return [r for r in rounds if r.at >= start and (end is None or r.at < end)]


def failed_seconds(rounds: list[Round], start: float, end: float) -> int:
    """Seconds of [start, end) the Service did not answer: each failed round counts from its start to the
    next round's start (a failing round is slow: it waits for timeouts), the last one up to `end`."""
    inside = between(rounds, start, end)
    total = 0.0
    for i, r in enumerate(inside):
        if not r.ok:
            total += (inside[i + 1].at if i + 1 < len(inside) else end) - r.at
    return round(total)


def failures(rounds: list[Round]) -> list[Round]:
    return [r for r in rounds if not r.ok]


def largest_gap(rounds: list[Round], start: float, end: float) -> float:
    """The longest stretch of [start, end) without a round starting (the client must keep going)."""
    marks = [start, *(r.at for r in between(rounds, start, end)), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def answering_since(rounds: list[Round], streak: int = 5) -> float | None:
    """When the client's current run of answered rounds began, if it is at least `streak` rounds long (the
    round after the last failed one, or the first round when none failed); None otherwise."""
    if len(rounds) < streak or not all(r.ok for r in rounds[-streak:]):
        return None
    failed = [i for i, r in enumerate(rounds) if not r.ok]
    return float(rounds[failed[-1] + 1].at if failed else rounds[0].at)


def wait_for_rounds(kube: Cluster, start: float, count: int, timeout: float = 120) -> list[Round]:
    """Wait until the client has logged `count` rounds that started at or after `start`; return them."""
    wait_for(f"{count} rounds of the client", lambda: len(rounds_since(kube, start)) >= count, timeout=timeout)
    return rounds_since(kube, start)[:count]


def web_endpoints_ready_in_cloud(kube: Cluster, node: str) -> int:
    """How many of web's endpoints on `node` the cloud's EndpointSlices hold ready."""
    slices = kube.kubectl.get("endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=web")["items"]
    return sum(
        1
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready", True) and e.get("nodeName") == node
    )


def served_on_node(kube: Cluster) -> bool:
    """Whether kube-proxy on the node sends web and kube-dns to both their pods."""
    return all(endpoints_in_rules(kube, port) == 2 for port in (f"{NS}/web:http", "kube-system/kube-dns:dns"))


def deploy(kube: Cluster, node: str) -> str:
    """Deploy the web pods, their Service and the client on `node`; wait until the Service answers there
    (web ready, kube-proxy's rules written) and the client has logged a round. Returns web's ClusterIP."""
    kube.kubectl.apply(web_objects(node))
    wait_for("the web pods to be ready", lambda: ready_replicas(kube, NS, "web") == 2, timeout=120)
    wait_for("kube-proxy's rules for web", lambda: has_rules_for(kube, f"{NS}/web:http"), timeout=60)
    web_ip = str(kube.kubectl.get("service", "web", "-n", NS)["spec"]["clusterIP"])
    kube.kubectl.apply([client_pod(node, web_ip)])
    started = time.time()
    wait_for("the client's first round", lambda: len(rounds_since(kube, started)) > 0, timeout=120)
    return web_ip


# --- what the cloud and the node hold ------------------------------------------------------------------


def cloud_web_pods(kube: Cluster) -> dict[str, dict[str, Any]]:
    """The web pods as the cloud holds them, by name."""
    pods = kube.kubectl.get("pods", "-n", NS, "-l", "app=web")["items"]
    return {str(p["metadata"]["name"]): p for p in pods}


def pod_ips(pod: dict[str, Any]) -> set[str]:
    return {str(e["ip"]) for e in (pod.get("status") or {}).get("podIPs") or [] if e.get("ip")}


def ready_since(pod: dict[str, Any]) -> float | None:
    """When the pod's Ready condition last became True (epoch seconds), None while it is not True."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True" and c.get("lastTransitionTime"):
            stamp = str(c["lastTransitionTime"]).replace("Z", "+00:00")
            return datetime.datetime.fromisoformat(stamp).timestamp()
    return None


_GET = """
import sys, ssl, urllib.request as u
url, agent = sys.argv[1], sys.argv[2]
headers = {"User-Agent": agent, "Accept": "application/json"}
context = None
if len(sys.argv) > 3:
    root = sys.argv[3]
    headers["Authorization"] = "Bearer " + open(root + "/token").read().strip()
    context = ssl.create_default_context(cafile=root + "/ca.crt")
with u.urlopen(u.Request(url, headers=headers), timeout=5, context=context) as r:
    print(r.read().decode())
"""


def _node_get(kube: Cluster, argv: list[str]) -> dict[str, Any] | None:
    out = kube.node.run(["python3", "-c", _GET, *argv], check=False)
    if out.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def web_back(kube: Cluster, names: list[str], after: float, old_ips: set[str]) -> dict[str, dict[str, Any]] | None:
    """The web pods `names` as yurthub answers kubelet (from its cache while the node is cut off), once every
    one is ready again since `after` with addresses none of which is in `old_ips`; None until then."""
    pods = {}
    for name in names:
        pod = kubelet_view(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
        if pod is None or not pod_ips(pod) or pod_ips(pod) & old_ips or (ready_since(pod) or 0.0) <= after:
            return None
        pods[name] = pod
    return pods


def kubelet_view(kube: Cluster, path: str) -> dict[str, Any] | None:
    """What yurthub's plain port answers kubelet for GET `path` (from its cache while the cloud is away),
    None when it does not answer 200."""
    return _node_get(kube, [f"http://127.0.0.1:10261{path}", "kubelet/v1 (linux/amd64)"])


def door_view(kube: Cluster, path: str, process: str) -> dict[str, Any] | None:
    """What yurthub's HTTPS door answers `process` (kube-proxy, coredns) for GET `path`, with that process's
    own service-account token and CA (read from its root on the node), None when it does not answer 200."""
    pids = kube.node.run(["pgrep", "-x", process], check=False).stdout.split()
    if not pids:
        return None
    root = f"/proc/{pids[0]}/root/var/run/secrets/kubernetes.io/serviceaccount"
    door = f"https://{DOOR_IP}:{DOOR_PORT}{path}"
    return _node_get(kube, [door, f"{process}/v1 (linux/amd64)", root])
