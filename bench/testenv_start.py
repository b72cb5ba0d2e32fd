"""How long the real local cluster takes to come up and go away (binaries and root already cached).

The foundation promises "from nothing to a Ready real node in well under two minutes". Each run records the
phases separately, and the median over runs, so a slow phase shows up by name.
"""

from __future__ import annotations

import statistics
import time

from testenv import cluster, images
from testenv.kubectl import wait_for

RUNS = 3


def one_run() -> dict[str, float]:
    t0 = time.monotonic()
    kube = cluster.Cluster.start(cluster.Settings(kwok_nodes=20))
    ready = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        kube.kubectl.run("run", "bench", f"--image={images.BUSYBOX_IMAGE}", "--restart=Never", "--", "sleep", "3600")
        wait_for(
            "the bench pod to run",
            lambda: kube.kubectl.get("pod", "bench")["status"].get("phase") == "Running",
            timeout=120,
            interval=0.1,
        )
        pod = time.monotonic() - t1
    finally:
        t2 = time.monotonic()
        kube.stop()
        stop = time.monotonic() - t2
    return {"start_to_all_nodes_ready_s": ready, "pod_create_to_running_s": pod, "stop_s": stop}


def run() -> dict[str, object]:
    runs = [one_run() for _ in range(RUNS)]
    medians = {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}
    return {"runs": runs, "median": medians, "kwok_nodes": 20}
