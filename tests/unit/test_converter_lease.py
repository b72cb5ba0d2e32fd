"""Leader election decisions on a Lease, as tables; and the two holders of a Lease (a `yurtctl` run's lock,
yurt-manager's election) against the in-memory Api: renewed on the lease's clock, and work stops once lost."""

from __future__ import annotations

import threading
import time

import prometheus_client as prom
import pytest

from converter import access, controller, lease, runner
from testenv.kubectl import wait_for

T0 = 1_800_000_000.0


def test_no_lease_is_created_for_me() -> None:
    got = lease.next_lease(None, "a", T0, 15, "yurt-manager", "kube-system")
    assert got is not None
    assert got["metadata"] == {"name": "yurt-manager", "namespace": "kube-system"}
    assert got["spec"]["holderIdentity"] == "a"
    assert lease.parse_time(got["spec"]["renewTime"]) == T0


def test_a_live_holder_keeps_it_and_renews() -> None:
    held = lease.next_lease(None, "a", T0, 15, "l", "ns")
    assert held is not None
    assert lease.next_lease(held, "b", T0 + 14, 15, "l", "ns") is None
    renewed = lease.next_lease(held, "a", T0 + 14, 15, "l", "ns")
    assert renewed is not None and lease.parse_time(renewed["spec"]["renewTime"]) == T0 + 14
    assert renewed["spec"].get("leaseTransitions", 0) == 0


def test_an_expired_lease_changes_hands() -> None:
    held = lease.next_lease(None, "a", T0, 15, "l", "ns")
    assert held is not None
    held["metadata"]["resourceVersion"] = "9"
    taken = lease.next_lease(held, "b", T0 + 15.5, 15, "l", "ns")
    assert taken is not None
    assert taken["spec"]["holderIdentity"] == "b"
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["metadata"]["resourceVersion"] == "9"


def test_release_frees_it_for_the_next_at_once() -> None:
    held = lease.next_lease(None, "a", T0, 15, "l", "ns")
    assert held is not None
    assert lease.released(held, "b") is None
    freed = lease.released(held, "a")
    assert freed is not None and freed["spec"]["holderIdentity"] == ""
    assert lease.next_lease(freed, "b", T0 + 1, 15, "l", "ns") is not None


def rival_takes(api: access.Api, path: str, holder: str, seconds: int) -> None:
    current = api.get(path)
    assert current is not None
    current["spec"].update(holderIdentity=holder, renewTime=lease.micro_time(time.time()), leaseDurationSeconds=seconds)
    api.replace(path, current)


def test_a_run_whose_lock_is_taken_makes_no_call_any_more_and_leaves_the_rivals_lease() -> None:
    api = access.MemoryApi()
    lock = runner.Lock(api, "me", seconds=3)
    lock.acquire(0)
    guarded = lock.guard(api)
    assert guarded.get(runner.LOCK_PATH) is not None  # held: calls go through
    rival_takes(api, runner.LOCK_PATH, "rival", 600)
    wait_for("the lock to be lost", lambda: bool(lock.lost), timeout=10, interval=0.05)
    with pytest.raises(runner.LockLost, match=r"another yurtctl run \(rival\) took the lock"):
        guarded.create("/api/v1/namespaces/default/configmaps", {"metadata": {"name": "late"}})
    with pytest.raises(runner.LockLost, match="kept the conversion record"):
        guarded.list("/api/v1/nodes")
    lock.release()
    held = api.get(runner.LOCK_PATH)
    assert held is not None and held["spec"]["holderIdentity"] == "rival"
    assert api.get("/api/v1/namespaces/default/configmaps/late") is None


def test_yurt_manager_renews_on_the_leases_clock_not_the_resync() -> None:
    api = access.MemoryApi()
    settings = controller.Settings(identity="a", resync_s=600, lease_duration_s=3, watch=False)
    m = controller.Manager(api, settings, controller.Metrics(prom.CollectorRegistry()))
    path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/yurt-manager"
    seen: set[str] = set()

    def renewed_three_times() -> bool:
        got = api.get(path)
        if got is not None:
            seen.add(got["spec"]["renewTime"])
        return len(seen) >= 3

    thread = threading.Thread(target=m.run, daemon=True)
    thread.start()
    try:
        wait_for("three renewals", renewed_three_times, timeout=10, interval=0.05)
        assert m.acting()
        rival_takes(api, path, "b", 600)
        wait_for("stepping down", lambda: not m.acting(), timeout=5, interval=0.05)
    finally:
        m.stopping.set()
        m.wake.set()
        thread.join(10)
    held = api.get(path)
    assert held is not None and held["spec"]["holderIdentity"] == "b"  # not released: it was not ours
