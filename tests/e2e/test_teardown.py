"""A cluster that ran a pod leaves nothing behind on the host once it is stopped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testenv import cluster, leftovers
from testenv.kubectl import wait_for


def test_stop_leaves_no_process_cgroup_link_mount_or_rule_behind() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    cache = cluster.cache_dir()
    with cluster.Cluster.start(cluster.Settings()) as kube:
        kube.kubectl.run(
            "run",
            "sleeper",
            "--image=localhost/yurt-edge/busybox:1",
            "--restart=Never",
            "--command",
            "--",
            "sleep",
            "3600",
        )
        wait_for(
            "the sleeper pod to run",
            lambda: kube.kubectl.get("pod", "sleeper")["status"].get("phase") == "Running",
            timeout=90,
        )
        during = leftovers.find(cache)
        assert during["processes"] and during["cgroups"] and during["links"], during  # the check can see them
    assert leftovers.find(cache) == {k: [] for k in during}


def test_the_next_start_clears_what_a_killed_harness_left_behind() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root")
    cache = cluster.cache_dir()
    script = (
        "import sys, time\n"
        "from testenv import cluster\n"
        "cluster.Cluster.start(cluster.Settings())\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=cluster.REPO)
    try:
        assert harness.stdout is not None
        assert harness.stdout.readline().strip() == "ready"
    finally:
        harness.kill()  # SIGKILL: no finally, no atexit, nothing of the harness runs
        harness.wait()
    left = leftovers.find(cache)
    assert left["processes"] and left["cgroups"] and left["links"], left
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as kube:
        assert kube.kubectl.get("nodes")["items"] == []  # a fresh control plane, not the killed one's
        during = leftovers.find(cache)
        assert not during["links"], during  # the killed run's node and link are gone
    assert leftovers.find(cache) == {k: [] for k in left}
