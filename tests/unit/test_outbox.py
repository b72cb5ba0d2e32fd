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
