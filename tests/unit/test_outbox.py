"""The outbox keeps writes in order across restarts and, when full, drops the oldest and counts it."""

from __future__ import annotations

from pathlib import Path

from yurthub import outbox


def write(i: int) -> outbox.Write:
    return outbox.Write("POST", "/api/v1/namespaces/default/events", "application/json", f"e{i}".encode(), "kubelet")


def test_order_survives_a_restart(tmp_path: Path) -> None:
    box = outbox.Outbox(tmp_path, capacity=10)
    for i in range(3):
        box.put(write(i))
    box.close()
    again = outbox.Outbox(tmp_path, capacity=10)
    got = []
    while (w := again.peek()) is not None:
        got.append(w.body)
        again.pop()
    assert got == [b"e0", b"e1", b"e2"]
    again.close()


def test_when_full_the_oldest_is_dropped_and_counted(tmp_path: Path) -> None:
    box = outbox.Outbox(tmp_path, capacity=3)
    for i in range(5):
        box.put(write(i))
    assert len(box) == 3
    assert [w.body for w in box.entries()] == [b"e2", b"e3", b"e4"]
    assert box.dropped == 2
    box.close()
    assert outbox.Outbox(tmp_path, capacity=3).dropped == 2


def status_write(pod: str, body: bytes) -> outbox.Write:
    path = f"/api/v1/namespaces/default/pods/{pod}/status"
    return outbox.Write("PATCH", path, "application/json", body, "kubelet", f"pods/default/{pod}")


def test_a_pods_newer_status_replaces_its_older_one_and_survives_a_restart(tmp_path: Path) -> None:
    box = outbox.Outbox(tmp_path, capacity=10)
    box.put(status_write("a", b"a1"))
    box.put(write(0))
    box.put(status_write("b", b"b1"))
    box.put(status_write("a", b"a2"))  # the latest status of `a`: the older one goes, this one queues last
    assert [w.body for w in box.entries()] == [b"b1", b"a2", b"e0"]
    box.close()
    again = outbox.Outbox(tmp_path, capacity=10)
    assert [(w.body, w.key) for w in again.entries()] == [
        (b"b1", "pods/default/b"),
        (b"a2", "pods/default/a"),
        (b"e0", ""),
    ]
    assert again.dropped == 0
    again.close()


def drain(box: outbox.Outbox) -> list[bytes]:
    got = []
    while (w := box.peek()) is not None:
        got.append(w.body)
        box.pop()
    return got


def test_the_pods_statuses_are_delivered_before_the_events_queued_earlier(tmp_path: Path) -> None:
    """The cloud's EndpointSlices follow the statuses: they must not wait behind a reboot's worth of Events."""
    box = outbox.Outbox(tmp_path, capacity=10)
    box.put(write(0))
    box.put(write(1))
    box.put(status_write("a", b"a1"))
    box.put(write(2))
    box.put(status_write("b", b"b1"))
    assert box.statuses() == 2
    assert drain(box) == [b"a1", b"b1", b"e0", b"e1", b"e2"]
    assert len(box) == 0 and box.statuses() == 0


def test_a_status_replaced_while_its_older_one_was_being_delivered_stays_queued(tmp_path: Path) -> None:
    box = outbox.Outbox(tmp_path, capacity=10)
    box.put(status_write("a", b"a1"))
    box.put(status_write("b", b"b1"))
    assert box.peek() == status_write("a", b"a1")  # being delivered ...
    box.put(status_write("a", b"a2"))  # ... when kubelet reports a newer one
    box.pop()  # a1 delivered: a2 must still go
    assert drain(box) == [b"b1", b"a2"]


def test_when_full_the_events_go_before_any_status(tmp_path: Path) -> None:
    box = outbox.Outbox(tmp_path, capacity=3)
    box.put(status_write("a", b"a1"))
    for i in range(4):
        box.put(write(i))
    assert [w.body for w in box.entries()] == [b"a1", b"e2", b"e3"]
    assert box.dropped == 2
