"""Service continuity through a node reboot: the seconds the shop's Service does not answer its client beyond
the web pods' own restart, offline (the link cut through the reboot) against online (the baseline).

The cluster is the one `tests/e2e/test_service_continuity.py` boots: the real node behind yurthub with its
HTTPS door, kube-proxy and CoreDNS on it, the web shop (`testenv.webshop`). One repetition reboots the node
and counts, from the client's own log lines, the failed seconds from the moment both web pods are ready again
(their Ready condition's transition, as kubelet reported it) until the client answers by name and ClusterIP
again; the pods' restart itself (sandboxes, images, readiness probes) is the same either way and not counted.
Repetitions alternate online and offline, so a drift of the machine weighs on both alike; an offline one
restores the link afterwards and waits until the node is Ready and kube-proxy serves both Services again.

Run: `python -m bench.service_bench` (prints the dict), or as part of `make bench`'s yurthub area.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from typing import Any

from testenv import cluster, hubinstall, services, webshop
from testenv.kubectl import node_ready, wait_for

log = logging.getLogger(__name__)
NODE = "edge-1"
REPETITIONS = 3


def _summary(values: list[int]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "raw": values}


def reboot_once(kube: cluster.Cluster, offline: bool) -> int:
    """Reboot the node (cut off first when `offline`); the failed seconds after both web pods are ready."""
    before = webshop.cloud_web_pods(kube)
    names = sorted(before)
    old_ips = set().union(*(webshop.pod_ips(p) for p in before.values()))
    if offline:
        kube.node.cut_link()
        wait_for(
            "yurthub to see the cloud gone",
            lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
            timeout=30,
        )
    try:
        rebooted = time.time()
        kube.node.reboot()
        hubinstall.wait_until_serving(kube.node)
        wait_for(
            "both web pods ready again with new addresses",
            lambda: webshop.web_back(kube, names, rebooted, old_ips) is not None,
            timeout=300,
        )
        pods = webshop.web_back(kube, names, rebooted, old_ips)
        if pods is None:
            raise RuntimeError("the web pods were ready and are not any more")
        ready_at = max(webshop.ready_since(p) or 0.0 for p in pods.values())
        wait_for(
            "the client to answer again",
            lambda: webshop.answering_since(webshop.rounds_since(kube, rebooted)) is not None,
            timeout=300,
        )
        since = webshop.answering_since(webshop.rounds_since(kube, rebooted))
        if since is None:
            raise RuntimeError("the client answered and does not any more")
        failed = webshop.failed_seconds(webshop.rounds_since(kube, ready_at), ready_at, since)
        log.info(
            "reboot offline=%s web_ready_after=%.0fs answering_after_web_ready=%.0fs failed_seconds=%d",
            offline,
            ready_at - rebooted,
            since - ready_at,
            failed,
        )
    finally:
        if offline:
            kube.node.restore_link()
    wait_for("the node to be Ready", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=120)
    wait_for("kube-proxy to serve web and kube-dns", lambda: webshop.served_on_node(kube), timeout=120)
    wait_for(
        "the web pods ready in the cloud", lambda: services.ready_replicas(kube, webshop.NS, "web") == 2, timeout=120
    )
    return failed


def run(repetitions: int = REPETITIONS) -> dict[str, object]:
    online: list[int] = []
    offline: list[int] = []
    with cluster.Cluster.start(cluster.Settings(services=True)) as kube:
        if kube.plane is None:
            raise RuntimeError("no control plane")
        services.door_certificate(kube)
        hubinstall.put_behind_yurthub(kube.node, server=kube.plane.cloud_server, extra_args=webshop.HUB_ARGS)
        wait_for("the node Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
        services.install(kube, NODE)
        webshop.deploy(kube, NODE)
        for _ in range(repetitions):
            online.append(reboot_once(kube, offline=False))
            offline.append(reboot_once(kube, offline=True))
    metrics = {
        "service_failed_seconds_online_reboot": statistics.median(online),
        "service_failed_seconds_offline_reboot": statistics.median(offline),
    }
    return {
        "metrics": metrics,
        "median": metrics,
        "service_reboots": {
            "service_failed_seconds_online_reboot": _summary(online),
            "service_failed_seconds_offline_reboot": _summary(offline),
            "repetitions": repetitions,
            "counted_from": "both web pods ready again (their Ready condition's transition)",
        },
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(json.dumps(run(), indent=2))
