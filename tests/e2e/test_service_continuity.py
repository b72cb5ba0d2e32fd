"""An edge application keeps answering by its Service name through an outage (issue 14, end to end).

One cluster for the module, its real node behind yurthub with the HTTPS door open, kube-proxy (kubeadm's
DaemonSet, iptables mode, kubeconfig at yurthub's plain port with its own token) and CoreDNS (kubeadm's
Deployment, in-cluster config through the door with its own token) on it (`testenv.services`). In namespace
`shop`: a Deployment of 2 busybox httpd pods behind Service `web`, and a client pod on the same node that
fetches `http://web.shop.svc.cluster.local/` and `http://<ClusterIP>/` in turn, about once a second, and
prints one line per round to its log, which the harness reads from the node's disk (kubelet's own log files,
so they can be read while the node is cut off):

    fetch <epoch seconds> name=ok|fail ip=ok|fail

The tests run in order on the same cluster, each leaving it online and serving; the outage figures are
counted by `failed_seconds` (helpers below), so later steps of the issue (an offline reboot with new pod
addresses, the cloud keeping the edge pods in their Services) add tests here that count the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from testenv import cluster, hubinstall, images, services
from testenv.kubectl import node_ready, wait_for

log = logging.getLogger(__name__)
NODE = "edge-1"
NS = "shop"
OUTAGE_S = 120
"""How long the link stays cut: past the cloud's node grace (12 s here) and CoreDNS's record TTL and cache
(30 s), long enough that watches held open by yurthub and lists from its cache carry the node."""
HUB_ARGS = (
    "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1 " + services.DOOR_ARGS
)
WEB_NAME = f"web.{NS}.svc.cluster.local"
ROUND_GAP_S = 15
"""Longest gap allowed between two rounds of the client: a round is two fetches with their timeouts (2 s
each, and the resolver's own) and a 1 s pause, so a longer gap means the client itself stalled."""


@pytest.fixture(scope="module")
def cluster_settings() -> cluster.Settings:
    return cluster.Settings(services=True)


@dataclasses.dataclass(frozen=True)
class Shop:
    kube: cluster.Cluster
    web_ip: str


@pytest.fixture(scope="module")
def shop(kube: cluster.Cluster) -> Iterator[Shop]:
    assert kube.plane is not None
    services.door_certificate(kube)
    hubinstall.put_behind_yurthub(kube.node, server=kube.plane.cloud_server, extra_args=HUB_ARGS)
    wait_for("the node to be Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    services.install(kube, NODE)
    kube.kubectl.apply(web_objects())
    wait_for("the web pods to be ready", lambda: services.ready_replicas(kube, NS, "web") == 2, timeout=120)
    wait_for("kube-proxy's rules for web", lambda: services.has_rules_for(kube, f"{NS}/web:http"), timeout=60)
    web_ip = str(kube.kubectl.get("service", "web", "-n", NS)["spec"]["clusterIP"])
    kube.kubectl.apply([client_pod(web_ip)])
    started = time.time()
    wait_for("the client's first round", lambda: len(rounds_since(kube, started)) > 0, timeout=120)
    yield Shop(kube, web_ip)


def web_objects() -> list[dict[str, Any]]:
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
                        "nodeSelector": {"kubernetes.io/hostname": NODE},
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
  name=ok; wget -q -T 2 -O /dev/null "http://$WEB_NAME/" || name=fail
  ip=ok; wget -q -T 2 -O /dev/null "http://$WEB_IP/" || ip=fail
  echo "fetch $t name=$name ip=$ip"
  sleep 1
done
"""


def client_pod(web_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": NS},
        "spec": {
            "nodeName": NODE,
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


# --- counting what the client saw ----------------------------------------------------------------------


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


def read_rounds(kube: cluster.Cluster) -> list[Round]:
    """Every round the client logged, from kubelet's log files of its container on the node's disk (every
    container the pod ever had: a restart or a reboot starts a new file)."""
    logs = kube.node.directory / "state" / "var" / "log" / "pods"
    lines: list[str] = []
    for path in sorted(logs.glob(f"{NS}_client_*/main/*.log")):
        lines += path.read_text(errors="replace").splitlines()
    return parse_rounds(lines)


def rounds_since(kube: cluster.Cluster, start: float, end: float | None = None) -> list[Round]:
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


def wait_for_rounds(kube: cluster.Cluster, start: float, count: int, timeout: float = 120) -> list[Round]:
    """Wait until the client has logged `count` rounds that started at or after `start`; return them."""
    wait_for(f"{count} rounds of the client", lambda: len(rounds_since(kube, start)) >= count, timeout=timeout)
    return rounds_since(kube, start)[:count]


def web_endpoints_ready_in_cloud(kube: cluster.Cluster) -> int:
    slices = kube.kubectl.get("endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=web")["items"]
    return sum(
        1
        for s in slices
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready", True) and e.get("nodeName") == NODE
    )


# --- the steps -----------------------------------------------------------------------------------------


def test_the_consumers_reach_the_api_through_yurthub(shop: Shop) -> None:
    """kube-proxy talks to yurthub's plain port; CoreDNS's in-cluster config names the door."""
    node = shop.kube.node
    sockets = node.run(["ss", "-tnpH", "state", "established"]).stdout
    assert any('"kube-proxy"' in line and "127.0.0.1:10261" in line for line in sockets.splitlines()), sockets
    pids = node.run(["pgrep", "-x", "coredns"]).stdout.split()
    assert len(pids) == 2, pids
    door = f"KUBERNETES_SERVICE_HOST={services.DOOR_IP}"
    for pid in pids:
        environ = node.run(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")
        assert door in environ, environ


def test_online_every_fetch_answers_by_name_and_by_cluster_ip(shop: Shop) -> None:
    rounds = wait_for_rounds(shop.kube, time.time(), 10)
    assert failures(rounds) == [], rounds


def test_through_a_cut_link_every_fetch_still_answers(shop: Shop) -> None:
    kube = shop.kube
    kube.node.cut_link()
    cut = time.time()
    try:
        wait_for(
            "yurthub to see the cloud gone",
            lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
            timeout=30,
        )
        wait_for(
            "the cloud to mark the node NotReady", lambda: not node_ready(kube.kubectl.get("node", NODE)), timeout=60
        )
        time.sleep(max(0.0, cut + OUTAGE_S - time.time()))  # the outage itself
    finally:
        kube.node.restore_link()
    restored = time.time()
    during = rounds_since(kube, cut, restored)
    assert len(during) > 0 and largest_gap(during, cut, restored) <= ROUND_GAP_S, "the client kept fetching"
    assert failures(during) == [], failures(during)
    assert failed_seconds(during, cut, restored) == 0

    wait_for("the node to be Ready again", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    wait_for(
        "the web pods ready in the cloud's EndpointSlice", lambda: web_endpoints_ready_in_cloud(kube) == 2, timeout=90
    )
    settled = time.time()
    log.info(
        "service continuity: outage=%.0fs failed_seconds_during=%d failed_seconds_catching_up=%d catching_up=%.0fs",
        restored - cut,
        failed_seconds(during, cut, restored),
        failed_seconds(rounds_since(kube, restored), restored, settled),
        settled - restored,
    )
    after = wait_for_rounds(kube, settled, 10)
    assert failures(after) == [], after
