"""Priority for the node's own components: a concurrency limit per class of request, in the spirit of
kube-apiserver's API Priority and Fairness, kept simple.

Pure: no I/O. `classify` names a request's class; `Seats.take` gives it a `Seat` or None (refuse now, with a
429: nothing waits, so a flood slows its senders and nobody else); `Seat.release` gives it back, once, however
the request ended.

Classes (a closed set, also the metric label values):
- `node`: a cache agent (`settings.cache.cache_agents`, named explicitly: `*` does not make every client one)
  on the plain port without an `Authorization` of its own. Never limited: these are the node's kubelet,
  kube-proxy, CNI; refusing them is the failure this module exists to prevent.
- `pod`: the HTTPS door (each request carries a pod's token).
- `other`: the plain port otherwise (unknown components, or requests carrying their own token).

Watches are not counted: they are long-lived (a node holds dozens for hours), so a slot per watch would either
starve a class's short requests or need a limit so high it bounds nothing. What a watch costs in memory is
bounded by the byte budgets (`budget`), and the cloud, not yurthub, bounds watches per client.
"""

from __future__ import annotations

from typing import Literal

Class = Literal["node", "pod", "other"]
CLASSES: tuple[Class, ...] = ("node", "pod", "other")


def classify(*, door: bool, component: str, agents: frozenset[str], own_credentials: bool) -> Class:
    """The class of one admitted request (see the module docstring)."""
    if door:
        return "pod"
    if not own_credentials and component and component in agents and component != "*":
        return "node"
    return "other"


class Seats:
    """In-flight non-watch requests per class, each class at most its limit (None: unlimited)."""

    def __init__(self, limits: dict[Class, int | None]) -> None:
        self.limits = dict(limits)
        self.inflight: dict[Class, int] = dict.fromkeys(CLASSES, 0)

    def take(self, cls: Class) -> Seat | None:
        """A seat of `cls`, or None when that class already has its limit in flight."""
        limit = self.limits.get(cls)
        if limit is not None and self.inflight[cls] >= limit:
            return None
        self.inflight[cls] += 1
        return Seat(self, cls)

    def count(self, cls: Class) -> int:
        return self.inflight[cls]


class Seat:
    """One request's place in its class; `release` gives it back and may be called any number of times."""

    def __init__(self, seats: Seats | None, cls: Class) -> None:
        self._seats = seats
        self.cls = cls

    def release(self) -> None:
        if self._seats is not None:
            self._seats.inflight[self.cls] -= 1
            self._seats = None


def uncounted(cls: Class) -> Seat:
    """A seat that counts nothing (a watch's): releasing it changes no count."""
    return Seat(None, cls)
