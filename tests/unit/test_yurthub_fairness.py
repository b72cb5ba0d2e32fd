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
    assert first is not None
    assert seats.take("other") is None
    pods = [seats.take("pod"), seats.take("pod")]
    assert seats.take("pod") is None
    nodes = [seats.take("node") for _ in range(1000)]  # never limited, whatever the others hold
    assert all(n is not None for n in nodes)
    first.release()
    first.release()  # twice: still one seat given back
    assert seats.inflight == {"node": 1000, "pod": 2, "other": 0}
    again = seats.take("other")
    assert again is not None
    assert seats.take("other") is None
    for seat in (*pods, *nodes, again):
        assert seat is not None
        seat.release()
    assert seats.inflight == {"node": 0, "pod": 0, "other": 0}


def test_an_uncounted_seat_changes_no_count() -> None:
    seats = fairness.Seats({"node": None, "pod": 1, "other": 1})
    fairness.uncounted("other").release()
    assert seats.inflight["other"] == 0
