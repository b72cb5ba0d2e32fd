"""Leader election decisions on a Lease, as tables."""

from __future__ import annotations

from converter import lease

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
