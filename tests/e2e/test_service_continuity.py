"""An edge application keeps answering by its Service name through an outage (issue 14, end to end).

One cluster for the module, its real node behind yurthub with the HTTPS door open, kube-proxy (kubeadm's
DaemonSet, iptables mode, kubeconfig at yurthub's HTTPS door with its own token) and CoreDNS (kubeadm's
Deployment, in-cluster config through the door with its own token) on it (`testenv.services`). In namespace
`shop`: a Deployment of 2 busybox httpd pods behind Service `web`, and a client pod on the same node that
fetches `http://web.shop.svc.cluster.local/` and `http://<ClusterIP>/` in turn, about once a second, and
prints one line per round to its log, which the harness reads from the node's disk (kubelet's own log files,
so they can be read while the node is cut off):

    fetch <epoch seconds> name=ok|fail ip=ok|fail

The tests run in order on the same cluster, each leaving it online and serving; the outage figures are
counted by `webshop.failed_seconds`, so later steps of the issue (an offline reboot with new pod
addresses, the cloud keeping the edge pods in their Services) add tests here that count the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import pytest

from testenv import cluster, hubinstall, services, webshop
from testenv.kubectl import node_ready, wait_for
from testenv.webshop import failed_seconds, failures, largest_gap, rounds_since, wait_for_rounds

log = logging.getLogger(__name__)
NODE = "edge-1"
NS = webshop.NS
OUTAGE_S = 120
"""How long the link stays cut: past the cloud's node grace (12 s here) and CoreDNS's record TTL and cache
(30 s), long enough that watches held open by yurthub and lists from its cache carry the node."""
HUB_ARGS = (
    "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1 " + services.DOOR_ARGS
)
ROUND_GAP_S = 15
"""Longest gap allowed between two rounds of the client: a round is two fetches cut off after 3 s each and a
1 s pause, so a longer gap means the client itself stalled."""


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
    yield Shop(kube, webshop.deploy(kube, NODE))


# --- the steps -----------------------------------------------------------------------------------------


def test_the_consumers_reach_the_api_through_yurthub(shop: Shop) -> None:
    """kube-proxy's kubeconfig and CoreDNS's in-cluster config both lead to yurthub's door."""
    node = shop.kube.node
    door = f"{services.DOOR_IP}:{services.DOOR_PORT}"
    sockets = node.run(["ss", "-tnpH", "state", "established"]).stdout
    assert any('"kube-proxy"' in line and door in line for line in sockets.splitlines()), sockets
    pids = node.run(["pgrep", "-x", "coredns"]).stdout.split()
    assert len(pids) == 2, pids
    for pid in pids:
        environ = node.run(["cat", f"/proc/{pid}/environ"]).stdout.split("\0")
        assert f"KUBERNETES_SERVICE_HOST={services.DOOR_IP}" in environ, environ


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
        "the web pods ready in the cloud's EndpointSlice",
        lambda: webshop.web_endpoints_ready_in_cloud(kube, NODE) == 2,
        timeout=90,
    )
    wait_for(
        "kube-proxy on the node to send web and kube-dns to both their pods",
        lambda: webshop.served_on_node(kube),
        timeout=60,
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


def pids(kube: cluster.Cluster, name: str) -> set[str]:
    return set(kube.node.run(["pgrep", "-x", name], check=False).stdout.split())


def node_get(kube: cluster.Cluster, url: str) -> str:
    """GET `url` from inside the node (its network namespace), or "" when it does not answer 200."""
    script = f"import urllib.request as u;print(u.urlopen('{url}', timeout=2).read().decode())"
    out = kube.node.run(["python3", "-c", script], check=False)
    return out.stdout if out.returncode == 0 else ""


def kube_proxy_last_sync(kube: cluster.Cluster) -> float:
    """When kube-proxy last wrote its rules (its own metric, on the node's loopback), or 0."""
    metric = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
    lines = node_get(kube, "http://127.0.0.1:10249/metrics").splitlines()
    return max((float(line.split()[-1]) for line in lines if line.startswith(metric)), default=0.0)


def test_offline_kube_proxy_and_coredns_start_again_from_yurthubs_cache(shop: Shop) -> None:
    """Both consumers crash while the node is cut off; kubelet starts them again, they list and watch through
    the door from yurthub's cache (their own tokens' scope), kube-proxy rewrites its rules, CoreDNS becomes ready
    again, and the Service answers by name and ClusterIP."""
    kube = shop.kube
    dns_ips = [
        p["status"]["podIP"] for p in kube.kubectl.get("pods", "-n", "kube-system", "-l", "k8s-app=kube-dns")["items"]
    ]
    assert len(dns_ips) == 2
    kube.node.cut_link()
    try:
        wait_for(
            "yurthub to see the cloud gone",
            lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
            timeout=30,
        )
        before = pids(kube, "kube-proxy") | pids(kube, "coredns")
        crashed = time.time()
        kube.node.run(["pkill", "-KILL", "-x", "kube-proxy"])
        kube.node.run(["pkill", "-KILL", "-x", "coredns"])
        wait_for(
            "kubelet to start kube-proxy and both CoreDNS again",
            lambda: len(pids(kube, "kube-proxy") - before) == 1 and len(pids(kube, "coredns") - before) == 2,
            timeout=90,
        )
        wait_for("kube-proxy to write its rules again", lambda: kube_proxy_last_sync(kube) > crashed, timeout=90)
        wait_for(
            "both CoreDNS ready again (their informers synced from the cache)",
            lambda: all(node_get(kube, f"http://{ip}:8181/ready") for ip in dns_ips),
            timeout=90,
        )
        back = time.time()
        after = wait_for_rounds(kube, back, 10)
        assert kube.node.link_is_up() is False, "the answers came while the node was still cut off"
        log.info(
            "offline restart of kube-proxy and CoreDNS: failed_seconds=%d until_back=%.0fs",
            failed_seconds(rounds_since(kube, crashed), crashed, back),
            back - crashed,
        )
        assert failures(after) == [], after
    finally:
        kube.node.restore_link()
    wait_for("the node to be Ready again", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    wait_for(
        "kube-proxy on the node to send web and kube-dns to both their pods",
        lambda: webshop.served_on_node(kube),
        timeout=120,
    )
