"""Priority for the node's own components (`fairness`): the pure seats and classes by table. The wiring
through real HTTP is in test_yurthub_bounds (its `node` fixture)."""

from __future__ import annotations

import pytest

from yurthub import fairness

AGENTS = frozenset({"kubelet", "kube-proxy"})


@pytest.mark.parametrize(
    ("door", "component", "agents", "own", "expected"),
    [
        (False, "kubelet", AGENTS, False, "node"),
        (False, "kube-proxy", AGENTS, False, "node"),
        (False, "kubelet", AGENTS, True, "other"),  # its own token: not the node's identity
        (False, "curl", AGENTS, False, "other"),
        (False, "", AGENTS, False, "other"),
        (False, "curl", frozenset({"*"}), False, "other"),  # `*` caches everyone, it trusts nobody more
        (True, "kubelet", AGENTS, True, "pod"),  # the door is always a pod's
        (True, "curl", AGENTS, False, "pod"),
    ],
)
def test_classes(door: bool, component: str, agents: frozenset[str], own: bool, expected: str) -> None:
    assert fairness.classify(door=door, component=component, agents=agents, own_credentials=own) == expected


def test_seats_refuse_past_the_limit_and_a_release_counts_once() -> None:
    seats = fairness.Seats({"node": None, "pod": 2, "other": 1})
    first = seats.take("other")
    assert isinstance(first, fairness.Seat)
    assert seats.take("other") == "class"
    pods = [seats.take("pod"), seats.take("pod")]
    assert seats.take("pod") == "class"
    nodes = [seats.take("node") for _ in range(1000)]  # never limited, whatever the others hold
    assert all(isinstance(n, fairness.Seat) for n in nodes)
    first.release()
    first.release()  # twice: still one seat given back
    assert seats.inflight == {"node": 1000, "pod": 2, "other": 0}
    again = seats.take("other")
    assert isinstance(again, fairness.Seat)
    assert seats.take("other") == "class"
    for seat in (*pods, *nodes, again):
        assert isinstance(seat, fairness.Seat)
        seat.release()
    assert seats.inflight == {"node": 0, "pod": 0, "other": 0}


def test_an_uncounted_seat_changes_no_count() -> None:
    seats = fairness.Seats({"node": None, "pod": 1, "other": 1})
    fairness.uncounted("other").release()
    assert seats.inflight["other"] == 0


def test_each_client_holds_at_most_its_share_and_is_forgotten_once_it_holds_none() -> None:
    seats = fairness.Seats({"node": None, "pod": 10, "other": 10}, per_client=2)
    hostile = [seats.take("pod", ("address:a", "token:x")) for _ in range(2)]
    assert all(isinstance(s, fairness.Seat) for s in hostile)
    assert seats.take("pod", ("address:a", "token:y")) == "client"  # its address's share is spent
    assert seats.take("pod", ("address:b", "token:x")) == "client"  # its token's share is spent
    other = seats.take("pod", ("address:b", "token:y"))
    assert isinstance(other, fairness.Seat)  # another pod still gets in
    assert seats.inflight["pod"] == 3
    assert seats.busiest() == 2
    # requests without clients (the plain port) are counted by class only, never by share
    plain = [seats.take("node") for _ in range(100)]
    assert all(isinstance(s, fairness.Seat) for s in plain)
    for seat in (*hostile, other, *plain):
        assert isinstance(seat, fairness.Seat)
        seat.release()
        seat.release()  # twice: given back once
    assert seats.clients == {}
    assert seats.busiest() == 0
    assert seats.inflight == {"node": 0, "pod": 0, "other": 0}


def test_the_class_limit_is_checked_before_the_share() -> None:
    seats = fairness.Seats({"node": None, "pod": 1, "other": 1}, per_client=5)
    first = seats.take("pod", ("address:a",))
    assert isinstance(first, fairness.Seat)
    assert seats.take("pod", ("address:b",)) == "class"
    assert seats.clients == {"address:a": 1}  # a refused request leaves no count behind
