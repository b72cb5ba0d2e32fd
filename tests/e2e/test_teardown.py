"""A cluster that ran a pod leaves nothing behind on the host once it is stopped."""

from __future__ import annotations

import os

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
