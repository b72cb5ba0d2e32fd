"""Writes the node made while the cloud was away, kept on disk and delivered in order when it is back.

Two bounded deques (diskcache, SQLite with `synchronous=FULL`, so a 201 given to kubelet survives a power
cut): the writes (Events) in the order they were made, and the pods' statuses.

A write with a `key` (a pod's status: `pods/NS/NAME`) is the latest state of one object, not a step: putting
another with the same key removes the older one in the same transaction and queues the new one at the end
of the statuses, so the outbox holds one status per pod however often kubelet reports offline. Statuses are
delivered before any other write (`peek`): they are what the cloud's EndpointSlices are made from, and until
they arrive the cloud sends every Service's clients to this node's pods' old addresses; the Events are
history and can wait. They are delivered by `statuses.deliver` (against the cloud's current object), the
others as they are. When the outbox is full the oldest other write is dropped and counted (a status only
when nothing else is left), never the newest.
"""

from __future__ import annotations

import dataclasses
import itertools
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
    """Not thread-safe: one thread (yurthub's writer) uses it."""

    def __init__(self, directory: Path, capacity: int) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Each deque owns its whole cache (every key in it is an entry), so the counter lives beside them.
        # An outbox written before statuses had their own deque holds them among the writes: they are
        # delivered there, in order, as before.
        self._cache = diskcache.Cache(str(directory / "writes"), sqlite_synchronous=2)
        self._status_cache = diskcache.Cache(str(directory / "statuses"), sqlite_synchronous=2)
        self._meta = diskcache.Cache(str(directory / "meta"), sqlite_synchronous=2)
        self._deque: Any = diskcache.Deque.fromcache(self._cache)
        self._statuses: Any = diskcache.Deque.fromcache(self._status_cache)
        self._peeked: tuple[Any, dict[str, Any]] | None = None
        self.capacity = capacity
        dropped = self._meta.get("dropped", 0)
        self.dropped: int = int(dropped) if isinstance(dropped, int) else 0

    def __len__(self) -> int:
        return len(self._deque) + len(self._statuses)

    def statuses(self) -> int:
        """How many pods' statuses wait for the cloud."""
        return len(self._statuses)

    def put(self, write: Write) -> None:
        """Append durably; past capacity the oldest entry goes (see the module doc), and the count of dropped
        ones is kept too."""
        if write.key:
            with self._status_cache.transact():
                stale = [e for e in self._statuses if e.get("key", "") == write.key]
                for entry in stale:
                    self._statuses.remove(entry)
                self._statuses.append(dataclasses.asdict(write))
        else:
            self._deque.append(dataclasses.asdict(write))
        while len(self) > self.capacity:
            (self._deque if len(self._deque) else self._statuses).popleft()
            self.dropped += 1
            self._meta.set("dropped", self.dropped)

    def peek(self) -> Write | None:
        """The next write to deliver: the oldest status, else the oldest other write; None when empty."""
        for deque in (self._statuses, self._deque):
            try:
                entry = deque[0]
            except IndexError:
                continue
            self._peeked = (deque, entry)
            return Write(**entry)
        self._peeked = None
        return None

    def pop(self) -> None:
        """Remove the write `peek` returned last (delivered); nothing when it is gone meanwhile (a newer
        status of the same pod replaced it, and stays queued)."""
        if self._peeked is None:
            return
        deque, entry = self._peeked
        self._peeked = None
        try:
            if deque[0] == entry:
                deque.popleft()
            else:
                deque.remove(entry)
        except (IndexError, ValueError):
            pass

    def entries(self, limit: int = 20) -> list[Write]:
        """The first `limit` writes in delivery order."""
        ordered = itertools.chain(self._statuses, self._deque)
        return [Write(**e) for _, e in zip(range(limit), ordered, strict=False)]

    def close(self) -> None:
        self._cache.close()
        self._status_cache.close()
        self._meta.close()
