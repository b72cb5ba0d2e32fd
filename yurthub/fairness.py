"""Priority for the node's own components: a concurrency limit per class of request, in the spirit of
kube-apiserver's API Priority and Fairness, kept simple.

Pure: no I/O. `classify` names a request's class; `Seats.take` gives it a `Seat` or says why not (refuse
now, with a 429: nothing waits, so a flood slows its senders and nobody else); `Seat.release` gives it back,
once, however the request ended.

Classes (a closed set, also the metric label values):
- `node`: a cache agent (`settings.cache.cache_agents`, named explicitly: `*` does not make every client one)
  on the plain port without an `Authorization` of its own. Never limited: these are the node's kubelet,
  kube-proxy, CNI; refusing them is the failure this module exists to prevent.
- `pod`: the HTTPS door (each request carries a pod's token).
- `other`: the plain port otherwise (unknown components, or requests carrying their own token).

Within the `pod` class, each client has a share of its own (`Seats.per_client`): a pod's source address and
the token it sends are each a client, and a request takes a seat from each, so neither one address (however
many tokens it makes up) nor one token (from however many addresses) can hold more than its share of the
class's seats, and the rest stay free for the other pods. Only the door's clients are told apart this way:
on the plain port every client is 127.0.0.1 and its User-Agent is what it says it is, so there is nothing to
tell them apart by; there the class limit alone keeps unknown clients from crowding out the node's own.

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


Refusal = Literal["class", "client"]
"""Why `Seats.take` refused: the class had its limit in flight, or one of the request's clients its share."""


class Seats:
    """In-flight non-watch requests per class, each class at most its limit (None: unlimited), and each
    client (`take`'s `clients`) at most `per_client` (None: unlimited).

    Bounded: a client is remembered only while it has a request in flight, so the table never holds more
    entries than there are requests in flight (times the keys each names)."""

    def __init__(self, limits: dict[Class, int | None], per_client: int | None = None) -> None:
        self.limits = dict(limits)
        self.per_client = per_client
        self.inflight: dict[Class, int] = dict.fromkeys(CLASSES, 0)
        self.clients: dict[str, int] = {}

    def take(self, cls: Class, clients: tuple[str, ...] = ()) -> Seat | Refusal:
        """A seat of `cls` for a request of `clients` (keys naming who sent it), or why not."""
        limit = self.limits.get(cls)
        if limit is not None and self.inflight[cls] >= limit:
            return "class"
        if self.per_client is not None and any(self.clients.get(c, 0) >= self.per_client for c in clients):
            return "client"
        self.inflight[cls] += 1
        for client in clients:
            self.clients[client] = self.clients.get(client, 0) + 1
        return Seat(self, cls, clients)

    def count(self, cls: Class) -> int:
        return self.inflight[cls]

    def busiest(self) -> int:
        """The most requests any one client has in flight (0 when none has any)."""
        return max(self.clients.values(), default=0)


class Seat:
    """One request's place in its class; `release` gives it back and may be called any number of times."""

    def __init__(self, seats: Seats | None, cls: Class, clients: tuple[str, ...] = ()) -> None:
        self._seats = seats
        self.cls = cls
        self.clients = clients

    def release(self) -> None:
        seats, self._seats = self._seats, None
        if seats is None:
            return
        seats.inflight[self.cls] -= 1
        for client in self.clients:
            left = seats.clients[client] - 1
            if left:
                seats.clients[client] = left
            else:
                del seats.clients[client]


def uncounted(cls: Class) -> Seat:
    """A seat that counts nothing (a watch's): releasing it changes no count."""
    return Seat(None, cls)
