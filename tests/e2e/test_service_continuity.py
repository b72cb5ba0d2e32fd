"""An edge application keeps answering by its Service name through an outage (issue 14, end to end).

One cluster for the module, its real node behind yurthub with the HTTPS door open, kube-proxy (kubeadm's
DaemonSet, iptables mode, kubeconfig at yurthub's HTTPS door with its own token) and CoreDNS (kubeadm's
Deployment, in-cluster config through the door with its own token) on it (`testenv.services`). In namespace
`shop`: a Deployment of 2 busybox httpd pods behind Service `web`, and a client pod on the same node that
fetches `http://web.shop.svc.cluster.local/` and `http://<ClusterIP>/` in turn, about once a second, and
prints one line per round to its log, which the harness reads from the node's disk (kubelet's own log files,
so they can be read while the node is cut off):

    fetch <epoch seconds> name=ok|fail ip=ok|fail

The tests run in order on the same cluster, each leaving it online and serving (but for the offline
reboot, whose outage the next two tests inspect and end); the outage figures are counted by
`webshop.failed_seconds`. yurt-manager runs on the host with its endpoint webhook (`testenv.yurtmanager`),
and the node is an autonomous edge node (its label and annotation) but where a test turns autonomy off.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import pytest

from converter import components, names
from testenv import cluster, controlplane, hubinstall, services, webshop, yurtmanager
from testenv.kubectl import node_ready, wait_for
from testenv.webshop import failed_seconds, failures, largest_gap, rounds_since, wait_for_rounds

log = logging.getLogger(__name__)
NODE = "edge-1"
NS = webshop.NS
OUTAGE_S = 120
"""How long the link stays cut: past the cloud's node grace (12 s here) and CoreDNS's record TTL and cache
(30 s), long enough that watches held open by yurthub and lists from its cache carry the node."""
HUB_ARGS = webshop.HUB_ARGS
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
def manager(kube: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[yurtmanager.HostManager]:
    """yurt-manager on the host with its endpoint webhook, and the node made an autonomous edge node (as
    `yurtctl convert` leaves an edge node): the cloud keeps its pods in their Services while it is cut off."""
    assert kube.plane is not None
    directory = tmp_path_factory.mktemp("manager")
    config = yurtmanager.own_kubeconfig(kube.plane, directory)
    port = controlplane.free_port()
    kube.kubectl.apply(components.endpoint_webhook_objects(yurtmanager.webhook_url(port)))
    m = yurtmanager.start(config, directory, "replica-a", "--resync-seconds=1", webhook_port=port)
    kube.kubectl.run("label", "node", NODE, f"{names.EDGE_WORKER_LABEL}=true", "--overwrite")
    set_autonomy(kube, True)
    yield m
    m.stop()
    log.info("yurt-manager log (tail):\n%s", "\n".join(m.log.read_text().splitlines()[-40:]))


@pytest.fixture(scope="module")
def shop(kube: cluster.Cluster, manager: yurtmanager.HostManager) -> Iterator[Shop]:
    assert kube.plane is not None
    services.door_certificate(kube)
    hubinstall.put_behind_yurthub(kube.node, server=kube.plane.cloud_server, extra_args=HUB_ARGS)
    wait_for("the node to be Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    services.install(kube, NODE)
    yield Shop(kube, webshop.deploy(kube, NODE))


def set_autonomy(kube: cluster.Cluster, on: bool) -> None:
    value = f"{names.AUTONOMY_ANNOTATION}=true" if on else f"{names.AUTONOMY_ANNOTATION}-"
    kube.kubectl.run("annotate", "node", NODE, value, "--overwrite")


@dataclasses.dataclass
class Outage:
    """The offline reboot's outage, shared by the tests that inspect it and end it."""

    cut: float = 0.0
    uids: dict[str, str] = dataclasses.field(default_factory=dict)
    old_ips: set[str] = dataclasses.field(default_factory=set)
    new_ips: set[str] = dataclasses.field(default_factory=set)
    dns_new_ips: set[str] = dataclasses.field(default_factory=set)


@pytest.fixture(scope="module")
def outage(shop: Shop) -> Iterator[Outage]:
    yield Outage()
    shop.kube.node.restore_link()  # whatever a failed test left


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


def cached_web_pods(kube: cluster.Cluster, names_: list[str]) -> dict[str, dict[str, object]]:
    """The web pods as yurthub answers kubelet (from its cache while cut off), those it answers."""
    found = {}
    for name in names_:
        pod = webshop.kubelet_view(kube, f"/api/v1/namespaces/{NS}/pods/{name}")
        if pod is not None:
            found[name] = pod
    return found


def test_offline_reboot_the_service_answers_by_name_within_30s_of_the_web_pods_ready(
    shop: Shop, outage: Outage
) -> None:
    """Step 3: cut off, kubelet and yurthub restarted, then the node rebooted (the link stays cut). The web
    and CoreDNS pods come back with new addresses; yurthub applies kubelet's status patches to its cache and
    rewrites the EndpointSlices it serves kube-proxy and CoreDNS, so the Service answers by name and by
    ClusterIP again within 30 s of both web pods being ready, long before the cloud returns."""
    kube = shop.kube
    before = webshop.cloud_web_pods(kube)
    assert len(before) == 2
    outage.uids = {n: str(p["metadata"]["uid"]) for n, p in before.items()}
    outage.old_ips = set().union(*(webshop.pod_ips(p) for p in before.values()))
    dns_before = {
        ip
        for p in kube.kubectl.get("pods", "-n", "kube-system", "-l", "k8s-app=kube-dns")["items"]
        for ip in webshop.pod_ips(p)
    }
    kube.node.cut_link()
    outage.cut = time.time()
    wait_for(
        "yurthub to see the cloud gone",
        lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
        timeout=30,
    )
    kube.node.run(["systemctl", "restart", "kubelet"])
    wait_for_rounds(kube, time.time(), 3)
    kube.node.run(["systemctl", "restart", "yurthub"])
    hubinstall.wait_until_serving(kube.node)
    wait_for_rounds(kube, time.time(), 3)

    rebooted = time.time()
    kube.node.reboot()
    assert kube.node.link_is_up() is False
    hubinstall.wait_until_serving(kube.node)

    wait_for(
        "both web pods ready again with new addresses (as kubelet reported them offline)",
        lambda: webshop.web_back(kube, sorted(before), rebooted, outage.old_ips) is not None,
        timeout=240,
    )
    pods = webshop.web_back(kube, sorted(before), rebooted, outage.old_ips)
    assert pods is not None
    outage.new_ips = set().union(*(webshop.pod_ips(p) for p in pods.values()))
    assert len(outage.new_ips) == 2 and not outage.new_ips & outage.old_ips, (outage.old_ips, outage.new_ips)
    ready_at = max(webshop.ready_since(p) or 0.0 for p in pods.values())
    wait_for(
        "the client to answer by name and ClusterIP again",
        lambda: webshop.answering_since(rounds_since(kube, rebooted)) is not None,
        timeout=180,
    )
    since = webshop.answering_since(rounds_since(kube, rebooted))
    assert since is not None
    assert kube.node.link_is_up() is False, "the Service must answer again while the node is still cut off"
    assert services.addresses_in_rules(kube, f"{NS}/web:http") == outage.new_ips
    outage.dns_new_ips = services.addresses_in_rules(kube, "kube-system/kube-dns:dns")
    assert len(outage.dns_new_ips) == 2 and not outage.dns_new_ips & dns_before, (dns_before, outage.dns_new_ips)
    log.info(
        "offline reboot: failed_seconds_after_web_ready=%d answering_after_web_ready=%.0fs "
        "failed_seconds_since_reboot=%d web_ready_after_reboot=%.0fs",
        failed_seconds(rounds_since(kube, ready_at), ready_at, since),
        since - ready_at,
        failed_seconds(rounds_since(kube, rebooted), rebooted, since),
        ready_at - rebooted,
    )
    assert since - ready_at <= 30, f"the Service answered again {since - ready_at:.0f}s after the web pods were ready"


def test_during_the_outage_the_cloud_keeps_the_autonomous_nodes_pods_in_web(shop: Shop, outage: Outage) -> None:
    """Step 4, the autonomous half: the node is NotReady in the cloud, the node lifecycle controller has
    marked its pods not ready, yet web's EndpointSlice keeps both (their last known addresses) ready."""
    kube = shop.kube
    assert outage.cut and kube.node.link_is_up() is False
    wait_for("the cloud to mark the node NotReady", lambda: not node_ready(kube.kubectl.get("node", NODE)), timeout=60)
    wait_for(
        "the node lifecycle controller to mark the web pods not ready",
        lambda: all(webshop.ready_since(p) is None for p in webshop.cloud_web_pods(kube).values()),
        timeout=60,
    )
    assert webshop.web_endpoints_ready_in_cloud(kube, NODE) == 2


def test_restoring_the_link_delivers_the_new_statuses_and_leaves_nothing_stale(shop: Shop, outage: Outage) -> None:
    """Step 5: the link is back. The cloud shows the pods' new addresses (the statuses yurthub queued), no
    pod was recreated, kube-proxy sends web to the new addresses, and what yurthub's cache answers the node
    offline afterwards is what the cloud serves."""
    kube = shop.kube
    assert outage.new_ips, "the offline reboot did not finish"
    kube.node.restore_link()
    restored = time.time()
    wait_for("the node to be Ready again", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    wait_for(
        "the cloud to show the web pods' new addresses",
        lambda: set().union(*(webshop.pod_ips(p) for p in webshop.cloud_web_pods(kube).values())) == outage.new_ips,
        timeout=60,
    )
    cloud = webshop.cloud_web_pods(kube)
    assert {n: str(p["metadata"]["uid"]) for n, p in cloud.items()} == outage.uids, "no pod recreated"
    wait_for("the outbox to drain", lambda: hubinstall.yurthub_status(kube.node)["outbox"]["depth"] == 0, timeout=60)  # type: ignore[index]
    wait_for(
        "the web pods ready in the cloud's EndpointSlice",
        lambda: webshop.web_endpoints_ready_in_cloud(kube, NODE) == 2,
        timeout=60,
    )
    wait_for("kube-proxy to send web and kube-dns to both their pods", lambda: webshop.served_on_node(kube), timeout=60)
    assert services.addresses_in_rules(kube, f"{NS}/web:http") == outage.new_ips
    settled = time.time()
    after = wait_for_rounds(kube, settled, 5)
    log.info(
        "link restored after the offline reboot: failed_seconds_after_restore=%d settled_after=%.0fs failed=%s",
        failed_seconds(rounds_since(kube, restored), restored, settled + 5),
        settled - restored,
        [(r.at - round(restored), r.by_name, r.by_ip) for r in failures(rounds_since(kube, restored, settled + 5))],
    )
    assert failures(after) == [], after

    # Nothing stale: cut off again, what the cache answers the node is what the cloud served just now.
    slices = kube.kubectl.get("endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=web")["items"]
    kube.node.cut_link()
    try:
        wait_for(
            "yurthub to see the cloud gone",
            lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
            timeout=30,
        )
        cached = cached_web_pods(kube, sorted(cloud))
        assert {n: webshop.pod_ips(p) for n, p in cached.items()} == {n: webshop.pod_ips(p) for n, p in cloud.items()}
        assert {n: p["metadata"]["uid"] for n, p in cached.items()} == outage.uids  # type: ignore[index]
        for s in slices:
            name = s["metadata"]["name"]
            served = webshop.door_view(
                kube, f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/{name}", "kube-proxy"
            )
            assert served is not None, f"kube-proxy's cached EndpointSlice {name}"
            assert endpoint_view(served) == endpoint_view(s), (served, s)
    finally:
        kube.node.restore_link()
    wait_for("the node to be Ready again", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)


def endpoint_view(eps: dict[str, object]) -> list[tuple[str, bool]]:
    """An EndpointSlice's endpoints as kube-proxy uses them: address and readiness."""
    return sorted(
        (str(a), bool((e.get("conditions") or {}).get("ready", True)))  # type: ignore[union-attr]
        for e in eps.get("endpoints") or []  # type: ignore[union-attr]
        for a in e.get("addresses") or []  # type: ignore[union-attr]
    )


def test_a_node_that_is_not_autonomous_loses_its_pods_from_web_in_the_cloud(shop: Shop) -> None:
    """Step 4, the other half: with autonomy turned off the cloud does what stock Kubernetes does (the
    pods marked not ready, out of web's ready endpoints) while the node is cut off; turned on again during
    the same outage, yurt-manager puts them back."""
    kube = shop.kube
    set_autonomy(kube, False)
    kube.node.cut_link()
    try:
        wait_for(
            "the cloud to mark the node NotReady", lambda: not node_ready(kube.kubectl.get("node", NODE)), timeout=60
        )
        wait_for(
            "the web pods out of web's ready endpoints in the cloud",
            lambda: webshop.web_endpoints_ready_in_cloud(kube, NODE) == 0,
            timeout=90,
        )
        assert all(webshop.ready_since(p) is None for p in webshop.cloud_web_pods(kube).values())
        set_autonomy(kube, True)
        wait_for(
            "yurt-manager to put them back once the node is autonomous again",
            lambda: webshop.web_endpoints_ready_in_cloud(kube, NODE) == 2,
            timeout=60,
        )
    finally:
        set_autonomy(kube, True)
        kube.node.restore_link()
    restored = time.time()
    wait_for("the node to be Ready again", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    wait_for("kube-proxy to send web and kube-dns to both their pods", lambda: webshop.served_on_node(kube), timeout=90)
    settled = time.time()
    after = wait_for_rounds(kube, settled, 5)
    log.info(
        "autonomy off then on during an outage: failed_seconds_after_restore=%d",
        failed_seconds(rounds_since(kube, restored), restored, settled + 5),
    )
    assert failures(after) == [], after
