"""Writes the node made while the cloud was away, kept on disk and delivered in order when it is back.

A bounded deque (diskcache, SQLite with `synchronous=FULL`, so a 201 given to kubelet survives a power
cut). When it is full the oldest entry is dropped and counted, never the newest.

A write with a `key` (a pod's status: `pods/NS/NAME`) is the latest state of one object, not a step: putting
another with the same key removes the older one in the same transaction and queues the new one at the end,
so the outbox holds one status per pod however often kubelet reports offline. Such writes are delivered by
`statuses.deliver` (against the cloud's current object), the others as they are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import diskcache


@dataclasses.dataclass(frozen=True)
class Write:
    method: str
    path_qs: str
    content_type: str
    body: bytes
    component: str
    key: str = ""
    """Non-empty for a write that replaces any queued one with the same key (the latest status of a pod)."""


class Outbox:
    def __init__(self, directory: Path, capacity: int) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The deque owns its whole cache (every key in it is an entry), so the counter lives beside it.
        self._cache = diskcache.Cache(str(directory / "writes"), sqlite_synchronous=2)
        self._meta = diskcache.Cache(str(directory / "meta"), sqlite_synchronous=2)
        self._deque: Any = diskcache.Deque.fromcache(self._cache)
        self.capacity = capacity
        dropped = self._meta.get("dropped", 0)
        self.dropped: int = int(dropped) if isinstance(dropped, int) else 0

    def __len__(self) -> int:
        return len(self._deque)

    def put(self, write: Write) -> None:
        """Append durably; past capacity the oldest entry goes, and the count of dropped ones is kept too."""
        with self._cache.transact():
            if write.key:
                stale = [e for e in self._deque if e.get("key", "") == write.key]
                for entry in stale:
                    self._deque.remove(entry)
            self._deque.append(dataclasses.asdict(write))
            while len(self._deque) > self.capacity:
                self._deque.popleft()
                self.dropped += 1
                self._meta.set("dropped", self.dropped)

    def peek(self) -> Write | None:
        try:
            return Write(**self._deque[0])
        except IndexError:
            return None

    def pop(self) -> None:
        self._deque.popleft()

    def entries(self, limit: int = 20) -> list[Write]:
        return [Write(**e) for _, e in zip(range(limit), self._deque, strict=False)]

    def close(self) -> None:
        self._cache.close()
        self._meta.close()
