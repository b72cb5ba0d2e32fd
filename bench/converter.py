"""How long `yurtctl convert` and `yurtctl revert` take on 100 nodes: the real node (a real Job: yurthub
installed, kubelet restarted through it) plus 99 kwok edge nodes whose Job pods kwok runs and completes
(`testenv.kwokjobs`), one kwok cloud node; 20 node Jobs at a time. yurt-manager, which runs the node Jobs
(conversion by label), runs on the host from its console script for the whole of convert and revert, as in
the converter e2e. Timed from the console script's start to its exit, one run (a run takes minutes; the
machine is shared). Then, on a cluster of its own, the YurtAppSet
figures (`bench.appset_bench`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from bench import appset_bench
from testenv import cluster, converterimage, kwokjobs, yurtmanager
from testenv.kubectl import node_ready, wait_for

KWOK_EDGE = 99
PARALLEL = 20


def _yurtctl(kube: cluster.Cluster, *args: str) -> float:
    assert kube.plane is not None
    binary = shutil.which("yurtctl", path=os.path.dirname(sys.executable))
    if binary is None:
        raise RuntimeError("the yurtctl console script is not installed next to this Python")
    t0 = time.monotonic()
    proc = subprocess.run(
        [binary, f"--kubeconfig={kube.plane.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"yurtctl {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def run() -> dict[str, object]:
    with cluster.Cluster.start(cluster.Settings(kwok_nodes=1)) as kube:
        assert kube.plane is not None
        jobs = kwokjobs.start(cluster.binaries(), kube.plane.admin_kubeconfig, kube.directory / "cloud", kube.group)
        try:
            kube.kubectl.apply(kwokjobs.node(f"bench-{i}") for i in range(KWOK_EDGE))

            def all_ready() -> bool:
                jobs.check_running()
                nodes = kube.kubectl.get("nodes", "-l", "type=kwok-jobs")["items"]
                return sum(node_ready(n) for n in nodes) == KWOK_EDGE

            wait_for(f"{KWOK_EDGE} kwok edge nodes Ready", all_ready, timeout=180)
            converterimage.load(kube.node, converterimage.build(cluster.cache_dir() / "images"))
            common = [f"--image={converterimage.IMAGE}", f"--parallel={PARALLEL}", "--node-timeout=600"]
            (kube.directory / "bench-manager").mkdir(exist_ok=True)
            config = yurtmanager.own_kubeconfig(kube.plane, kube.directory / "bench-manager")
            manager = yurtmanager.start(
                config, kube.directory / "bench-manager", "bench-manager", f"--max-parallel-conversions={PARALLEL}"
            )
            try:
                convert_s = _yurtctl(kube, "convert", "--cloud-nodes=kwok-0", "--manager-replicas=0", *common)
                revert_s = _yurtctl(kube, "revert", *common)
            finally:
                manager.stop()
        finally:
            jobs.stop()
    return {
        "nodes": KWOK_EDGE + 2,
        "edge_nodes": KWOK_EDGE + 1,
        "parallel_jobs": PARALLEL,
        "convert_100_nodes_s": round(convert_s, 1),
        "revert_100_nodes_s": round(revert_s, 1),
        "target_s": 120,
        "yurtappset": appset_bench.run(),
    }
