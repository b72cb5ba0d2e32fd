"""Priority for the node's own components: a concurrency limit per class of request, in the spirit of
kube-apiserver's API Priority and Fairness, kept simple.

Pure: no I/O. `classify` names a request's class; `Seats.take` gives it a `Seat` or says why not (refuse
now, with a 429: a flood past its class's limit slows its senders and nobody else); `Seat.release` gives it
back, once, however the request ended.

Two bounds. A class's limit bounds how many of its requests are admitted at once (past it, 429 at once).
Of the admitted `pod` and `other` requests, only `Seats.serving` are served at once, node wide; the others
wait their turn in arrival order (`Seat.ready` False until `Seat.wake`), and the caller gives up after a
while (a 429 too). Why both: everything yurthub does for a request (parsing, relaying, TLS to the cloud)
runs on one event loop, and a kubelet request that arrives while dozens of pod requests are being served
waits behind every one of their steps; a waiting request costs the loop nothing (its body stays in the
socket), so however many pods call at once, kubelet shares the loop with at most `serving` of them. The
`node` class never waits and is never counted against `serving`.

Classes (a closed set, also the metric label values):
- `node`: a cache agent (`settings.cache.cache_agents`, named explicitly: `*` does not make every client one)
  on the plain port without an `Authorization` of its own, from a process the kernel says runs as one of the
  trusted uids (`--node-uids`, `peers`: a User-Agent is whatever a local process says, its uid is not; a
  lookup that fails is not trusted). Never limited: these are the node's kubelet, kube-proxy, CNI; refusing
  them is the failure this module exists to prevent. A process of another uid naming itself kubelet is `other`.
- `pod`: the HTTPS door (each request carries a pod's token).
- `other`: the plain port otherwise (unknown components, or requests carrying their own token).

Within the `pod` class, each client has a share of its own (`Seats.per_client`): a pod's source address and
the token it sends are each a client, and a request takes a seat from each, so neither one address (however
many tokens it makes up) nor one token (from however many addresses) can hold more than its share of the
class's seats, and the rest stay free for the other pods. Only the door's clients are told apart this way:
on the plain port every client is 127.0.0.1 and its User-Agent is what it says it is; there the class limit
alone keeps unknown clients (and untrusted uids claiming a node component's name) from crowding out the
node's own.

Watches are not counted: they are long-lived (a node holds dozens for hours), so a slot per watch would either
starve a class's short requests or need a limit so high it bounds nothing. What a watch costs in memory is
bounded by the byte budgets (`budget`), and the cloud, not yurthub, bounds watches per client.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Literal

Class = Literal["node", "pod", "other"]
CLASSES: tuple[Class, ...] = ("node", "pod", "other")


def classify(
    *, door: bool, component: str, agents: frozenset[str], own_credentials: bool, trusted_peer: Callable[[], bool]
) -> Class:
    """The class of one admitted request (see the module docstring). `trusted_peer` says whether the client's
    process runs as a trusted uid (`peers`); it is asked only of a request that would otherwise be `node`, so
    no other request pays for the lookup. This is the one place that decides a request is the node's own:
    everything granted only to the node's components goes by its answer (`hub.Admitted.node`)."""
    if door:
        return "pod"
    if not own_credentials and component and component in agents and component != "*" and trusted_peer():
        return "node"
    return "other"


Refusal = Literal["class", "client", "wait"]
"""Why a request was refused: the class had its limit admitted, or one of the request's clients its share
(both from `Seats.take`), or the request waited its turn longer than its caller allows (`wait`)."""


class Seats:
    """Non-watch requests admitted per class, each class at most its limit (None: unlimited), and each client
    (`take`'s `clients`) at most `per_client` (None: unlimited); of the admitted `pod` and `other` requests,
    at most `serving` are served at once (None: all of them), the rest wait their turn in arrival order.

    Bounded: a client is remembered only while it has a request admitted, so the table never holds more
    entries than there are requests admitted (times the keys each names); the queue never holds more than
    the `pod` and `other` limits together."""

    def __init__(
        self, limits: dict[Class, int | None], per_client: int | None = None, serving: int | None = None
    ) -> None:
        self.limits = dict(limits)
        self.per_client = per_client
        self.serving = serving
        self.inflight: dict[Class, int] = dict.fromkeys(CLASSES, 0)
        """Admitted per class: served, or waiting their turn."""
        self.clients: dict[str, int] = {}
        self.served = 0
        """`pod` and `other` requests being served now (at most `serving`)."""
        self.queue: collections.deque[Seat] = collections.deque()
        """`pod` and `other` seats waiting for their turn, the oldest first."""

    def take(
        self, cls: Class, clients: tuple[str, ...] = (), *, long_running: bool = False
    ) -> Seat | Literal["class", "client"]:
        """A seat of `cls` for a request of `clients` (keys naming who sent it), or why not. The seat may have
        to wait its turn (`Seat.ready` False): the caller waits for `Seat.wake`, or gives up and releases it.
        A `long_running` request (`long_running`: a followed log, exec, attach, port-forward, proxy) counts
        against its class and its clients but never waits its turn nor takes one of the `serving` seats: it
        may last hours, and a few of them would otherwise hold every seat and starve every short request."""
        limit = self.limits.get(cls)
        if limit is not None and self.inflight[cls] >= limit:
            return "class"
        if self.per_client is not None and any(self.clients.get(c, 0) >= self.per_client for c in clients):
            return "client"
        self.inflight[cls] += 1
        for client in clients:
            self.clients[client] = self.clients.get(client, 0) + 1
        seat = Seat(self, cls, clients)
        if cls != "node" and self.serving is not None and not long_running:
            if self.served < self.serving and not self.queue:
                self.served += 1
                seat.serving = True
            else:
                seat.ready = False
                self.queue.append(seat)
        return seat

    def count(self, cls: Class) -> int:
        return self.inflight[cls]

    def waiting(self, cls: Class) -> int:
        """Seats of `cls` waiting their turn."""
        return sum(1 for seat in self.queue if seat.cls == cls)

    def busiest(self) -> int:
        """The most requests any one client has in flight (0 when none has any)."""
        return max(self.clients.values(), default=0)

    def _give_back(self, seat: Seat) -> None:
        self.inflight[seat.cls] -= 1
        for client in seat.clients:
            left = self.clients[client] - 1
            if left:
                self.clients[client] = left
            else:
                del self.clients[client]
        if not seat.ready:
            self.queue.remove(seat)  # gave up waiting: it was never served
            return
        if not seat.serving or self.serving is None:
            return  # the node's own, a long-running request, or no bound: it held no serving seat
        self.served -= 1
        while self.queue and self.served < self.serving:
            turn = self.queue.popleft()
            self.served += 1
            turn.ready = True
            turn.serving = True
            if turn.wake is not None:
                turn.wake()


class Seat:
    """One request's place in its class; `release` gives it back and may be called any number of times.

    `ready` says whether the request may be served now; a seat that waits its turn becomes ready when a
    served one is released, and then `wake` (set by whoever waits) is called, once."""

    def __init__(self, seats: Seats | None, cls: Class, clients: tuple[str, ...] = ()) -> None:
        self._seats = seats
        self.cls = cls
        self.clients = clients
        self.ready = True
        self.serving = False
        """Whether it holds one of `Seats.serving` (given back, and the next one woken, on release)."""
        self.wake: Callable[[], None] | None = None

    def release(self) -> None:
        seats, self._seats = self._seats, None
        if seats is not None:
            seats._give_back(self)


LONG_RUNNING_VERBS = frozenset({"watch", "proxy"})
LONG_RUNNING_SUBRESOURCES = frozenset({"attach", "exec", "log", "portforward", "proxy"})
"""kube-apiserver's long-running requests (its default `BasicLongRunningRequestCheck`), which its own
concurrency limits leave out too. A log is one whether it follows or not: the apiserver does not look."""


def long_running(verb: str, subresource: str) -> bool:
    return verb in LONG_RUNNING_VERBS or subresource in LONG_RUNNING_SUBRESOURCES


def uncounted(cls: Class) -> Seat:
    """A seat that counts nothing (a watch's): releasing it changes no count."""
    return Seat(None, cls)
