"""Leases that are lost stop the work, against the real kube-apiserver: a `yurtctl convert` whose lock another
run takes stops at once and keeps its record; yurt-manager renews its Lease on the lease's own clock however
long its resync, and one whose Lease is taken stops acting until it holds it again."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import components, lease, names, nodeconversion, plan, runner
from testenv import cluster, yurtmanager
from testenv.kubectl import wait_for

FOREVER = {names.NOT_READY_TAINT: None, names.UNREACHABLE_TAINT: None}


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        yield c


def node(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
    }


def mark_ready(cloud: cluster.Cluster, name: str) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now}
    cloud.kubectl.run(
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"conditions": [ready]}}),
    )


def take_over(cloud: cluster.Cluster, name: str, holder: str, seconds: int) -> None:
    """Another holder writes the Lease, as a rival run or replica would."""
    now = lease.micro_time(datetime.datetime.now(datetime.UTC).timestamp())
    spec = {"holderIdentity": holder, "acquireTime": now, "renewTime": now, "leaseDurationSeconds": seconds}
    cloud.kubectl.run("patch", "lease", "-n", "kube-system", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def lease_spec(cloud: cluster.Cluster, name: str) -> dict[str, Any]:
    got = cloud.kubectl.run("get", "lease", "-n", "kube-system", name, "-o", "json", check=False)
    return dict(json.loads(got).get("spec") or {}) if got.strip() else {}


def jobs_for(cloud: cluster.Cluster, edge: str) -> list[str]:
    return [
        j["metadata"]["name"]
        for j in cloud.kubectl.get("jobs", "-n", "kube-system", "-l", f"{components.JOB_LABEL}={edge}")["items"]
    ]


def test_a_convert_whose_lock_another_run_takes_stops_at_once_and_keeps_its_record(
    cloud: cluster.Cluster, tmp_path: Path
) -> None:
    assert cloud.plane is not None
    cloud.kubectl.apply([node("cloud-1"), node("edge-a"), node("edge-b")])
    for n in ("cloud-1", "edge-a", "edge-b"):
        mark_ready(cloud, n)
    yurtctl = shutil.which("yurtctl", path=os.path.dirname(sys.executable))
    assert yurtctl is not None
    out, err = tmp_path / "out", tmp_path / "err"
    run = subprocess.Popen(
        [
            yurtctl,
            f"--kubeconfig={cloud.plane.admin_kubeconfig}",
            "convert",
            "--cloud-nodes=cloud-1",
            "--edge-nodes=edge-a,edge-b",
            "--node-timeout=900",  # no yurt-manager converts the nodes: the run follows them until the lock goes
            "--manager-replicas=0",
        ],
        stdout=out.open("wb"),
        stderr=err.open("wb"),
    )
    try:

        def following() -> bool:
            assert run.poll() is None, (out.read_text(), err.read_text())
            annotations = cloud.kubectl.get("node", "edge-b")["metadata"].get("annotations") or {}
            return nodeconversion.RETRY in annotations

        wait_for("the run to hold the lock, label the edge nodes and follow them", following, timeout=60)
        assert lease_spec(cloud, runner.LOCK)["holderIdentity"] != "rival-run"
        take_over(cloud, runner.LOCK, "rival-run", 600)
        code = run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    message = err.read_text()
    assert code == 1, (out.read_text(), message)
    assert "another yurtctl run (rival-run) took the lock kube-system/yurtctl-lock" in message
    assert "kept the conversion record" in message
    assert not jobs_for(cloud, "edge-a") and not jobs_for(cloud, "edge-b")  # only yurt-manager makes them
    assert lease_spec(cloud, runner.LOCK)["holderIdentity"] == "rival-run"  # the rival's Lease is left alone
    record = cloud.kubectl.get("configmap", "-n", "kube-system", plan.RECORD)
    assert record["data"]["options"]
    assert not [k for k in record["data"] if k.startswith("node.")]  # nothing more was written


@pytest.fixture(scope="module")
def manager_kubeconfig(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert cloud.plane is not None
    return yurtmanager.own_kubeconfig(cloud.plane, tmp_path_factory.mktemp("manager"))


def leader(m: yurtmanager.HostManager) -> str:
    metrics = m.get("/metrics")[1]
    return "1" if "\nyurt_manager_leader 1.0" in metrics else "0"


def tolerations(cloud: cluster.Cluster, name: str) -> dict[str, Any]:
    p = cloud.kubectl.get("pod", name)
    return {t["key"]: t.get("tolerationSeconds") for t in p["spec"]["tolerations"] if t.get("effect") == "NoExecute"}


def seconds_of(stamp: str) -> int:
    return int(datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


def test_yurt_manager_renews_on_the_leases_clock_and_stops_acting_while_another_holds_it(
    cloud: cluster.Cluster, manager_kubeconfig: Path, tmp_path: Path
) -> None:
    name = "yurt-manager-clock"
    m = yurtmanager.start(
        manager_kubeconfig,
        tmp_path,
        "clocked",
        "--resync-seconds=600",  # far longer than the lease: renewals must not wait for it
        "--leader-elect-lease-duration=3",
        f"--leader-elect-lease-name={name}",
    )
    try:
        wait_for(
            "the Lease to be taken", lambda: lease_spec(cloud, name).get("holderIdentity") == "clocked", timeout=30
        )
        seen: set[str] = set()

        def renewed_three_times() -> bool:
            seen.add(str(lease_spec(cloud, name).get("renewTime")))
            return len(seen) >= 4

        wait_for("three renewals on the lease's own clock", renewed_three_times, timeout=20)

        cloud.kubectl.apply(
            [node("edge-clock", {names.EDGE_WORKER_LABEL: "true"}, {names.AUTONOMY_ANNOTATION: "true"})]
        )
        take_over(cloud, name, "rival-replica", 8)
        wait_for("the replica to step down", lambda: leader(m) == "0", timeout=10)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "clock", "namespace": "default"},
            "spec": {"nodeName": "edge-clock", "containers": [{"name": "c", "image": "busybox"}]},
        }
        cloud.kubectl.apply([pod])
        # Once the rival's 8 s run out the replica takes the Lease back and only then rewrites the pod.
        wait_for("the pod to tolerate forever", lambda: tolerations(cloud, "clock") == FOREVER, timeout=40)
        spec = lease_spec(cloud, name)
        assert spec["holderIdentity"] == "clocked"
        fields = cloud.kubectl.get("pod", "clock", "--show-managed-fields")["metadata"]["managedFields"]
        by_manager = [f["time"] for f in fields if f.get("manager", "").startswith("yurt-manager")]
        assert by_manager and min(seconds_of(t) for t in by_manager) >= seconds_of(spec["acquireTime"])
        assert "leadership lost identity=clocked" in m.log.read_text()
    finally:
        m.stop()
