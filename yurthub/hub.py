"""The request path's shared state: built once by `server`, handed to `proxy`, `remote` and `local`.

A `Hub` owns the cloud sessions, the cache and its single writer thread, the outbox, the metrics, the
response-filter rules (and the requests negotiated as JSON without a filter, `AS_JSON`), the memory budgets
and the offline watches being held (`held`, told of what the node rewrites offline). It does no routing
itself: `proxy.handle` decides, `remote` forwards and relays, `local` answers from the cache.

Bounded: `requests` (bytes of request bodies and whole answers held at once), `lists` (list bodies buffered
for the cache, until written), `last_lists` (least recently used digests go first), pending cache writes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from yurthub import (
    budget,
    config,
    errors,
    fairness,
    filters,
    health,
    memory,
    metrics,
    outbox,
    peers,
    requestinfo,
    storage,
    topology,
    wire,
)

log = logging.getLogger(__name__)

MAX_PENDING_WRITES = 256


AS_JSON = "as-json"
"""Not a filter: the name that makes a read go upstream as JSON, with no filter built for it (the bytes pass
as the cloud sent them): kubelet's pods and, on the HTTPS door, endpoint slices and endpoints, so what the
node rewrites offline (`statuses`) is cached in the one encoding it can be rewritten in."""
_DOOR_AS_JSON = frozenset({("discovery.k8s.io", "endpointslices"), ("", "endpoints")})


@dataclasses.dataclass(eq=False)
class HeldWatch:
    """An offline watch held open by `local`: told of objects the node changes offline in its view."""

    key: storage.ViewKey
    events: asyncio.Queue[bytes] = dataclasses.field(default_factory=asyncio.Queue)
    """Whole watch event lines (JSON, newline-terminated), to write in order."""


@dataclasses.dataclass
class Admitted:
    """A request `proxy.handle` let in: what it asks for, its filters, its body, and the memory it holds."""

    info: requestinfo.RequestInfo
    names: tuple[str, ...]
    """The response filters it gets (`filters`); empty for a byte-exact pass-through."""
    body: bytes
    held: budget.Hold
    """Bytes of the node-wide `requests` budget this request holds (its body, then whole answers)."""
    seat: fairness.Seat
    """Its place among its class's requests in flight (`fairness`); released when `proxy.handle` ends."""

    @property
    def node(self) -> bool:
        """Whether the node's own component sent it (`fairness.classify`: a cache agent on the plain port,
        no `Authorization` of its own, from a process of a trusted uid): the one decision every grant made
        only to the node's components (never limited, kubelet's offline writes) goes by."""
        return self.seat.cls == "node"


class Hub:
    """Everything the request path needs, built once by `server` and passed in."""

    def __init__(
        self,
        settings: config.HubSettings,
        servers: health.Servers,
        store: storage.Storage,
        box: outbox.Outbox,
        stats: metrics.Metrics,
        node_session: aiohttp.ClientSession,
        token_session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.servers = servers
        self.store = store
        self.outbox = box
        self.metrics = stats
        self.node_session = node_session
        self.token_session = token_session
        self.agents = frozenset(settings.cache.cache_agents)
        # One writer thread: cache writes apply in arrival order and SQLite sees a single writer.
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")
        self.inflight: set[Callable[[], object]] = set()
        self.pending: set[asyncio.Future[Any]] = set()
        self.last_lists: collections.OrderedDict[object, bytes] = collections.OrderedDict()
        """Digest of the last list stored per view, least recently used first; at most `max_list_digests`.
        Cleared whenever the storage removed views (eviction, idle expiry): see `list_changed`."""
        self._forgotten = store.forgotten()
        """`store.forgotten()` when `last_lists` was last checked against it."""
        limits = settings.limits
        self.requests_budget = budget.Budget(limits.max_bytes_in_memory)
        """Request bodies and whole answers held in memory at once; past it, 429."""
        self.lists_budget = budget.Budget(limits.max_list_buffer_bytes)
        """List bodies buffered for the cache, from the first byte read until written; past it, not cached."""
        self.seats = fairness.Seats(
            {"node": None, "pod": limits.max_inflight_pod, "other": limits.max_inflight_other},
            per_client=limits.max_inflight_per_pod,
            serving=limits.max_concurrent_non_node,
        )
        """Non-watch requests in flight per class (`fairness`); past a class's limit, 429; of the pods' and
        other clients', a few served at once, the rest waiting their turn."""
        self.peers = peers.Trust(limits.node_uids, lambda reason: stats.peer_lookup_failures.labels(reason).inc())
        """Whose processes the plain port's clients are (`peers`): the node's own components run as these uids."""
        for cls in fairness.CLASSES:
            stats.inflight.labels(cls).set_function(functools.partial(self.seats.count, cls))
            stats.waiting.labels(cls).set_function(functools.partial(self.seats.waiting, cls))
        stats.serving_non_node.set_function(lambda: self.seats.served)
        self.outbox_depth = 0
        """The outbox's length as last read on the writer thread (the event loop never asks the disk)."""
        self.cache_writable = True
        """False while cache writes fail (a full disk); forwarding goes on regardless."""
        self.closing: set[asyncio.Future[None]] = set()
        self.cloud_back = asyncio.Event()
        self.filter_rules = filters.index(dict(settings.filters.rules)) if settings.filters.enabled else {}
        self.door = (settings.door.address, settings.door.port) if settings.door.enabled else None
        self.held: set[HeldWatch] = set()
        """Offline JSON watches being held (`local`), told of offline rewrites (`statuses`)."""
        self.facts = topology.FactsSource(
            settings.node_name, settings.filters.nodepool_label, store, self.fetch_json, self.in_writer
        )

    def filter_names(self, info: requestinfo.RequestInfo) -> tuple[str, ...]:
        """The filters this request's response goes through (`masterservice` only while the door is open)."""
        names = filters.names_for(self.filter_rules, info)
        names = tuple(n for n in names if n != filters.MASTER_SERVICE or self.door is not None)
        if (
            info.component == "kubelet"
            and info.resource == "pods"
            and not info.group
            and not info.subresource
            and info.verb in filters.FILTERED_VERBS
        ):
            names += (AS_JSON,)
        return names

    def door_names(self, info: requestinfo.RequestInfo) -> tuple[str, ...]:
        """What the door adds to a request's filters: JSON for the endpoints a pod (CoreDNS) reads (see `AS_JSON`)."""
        if (
            info.verb in filters.FILTERED_VERBS
            and not info.subresource
            and (info.group, info.resource) in _DOOR_AS_JSON
        ):
            return (AS_JSON,)
        return ()

    async def chain(self, info: requestinfo.RequestInfo, names: tuple[str, ...]) -> filters.Chain:
        """The filters for `names`; raises `errors.Unfilterable` when one of them lacks its input (no topology
        facts were ever had), so the caller fails closed instead of sending what the filter would hide."""
        facts = None
        if filters.SERVICE_TOPOLOGY in names:
            facts = await self.facts.get()
            if facts is None:
                raise errors.Unfilterable("the service topology facts could not be read from the cloud yet")
        return filters.build(names, door=self.door, facts=facts)

    def server_failed(self, server: str, reason: str) -> None:
        """A connection to `server` failed: it is down until probes say otherwise."""
        if self.servers.record(server, False, reason):
            self.cloud_changed()
        self.metrics.cloud_healthy.labels(server).set(0)

    async def fetch_json(self, path: str) -> bytes | None:
        """GET `path` from a healthy cloud server with the node's identity; None if that cannot be had."""
        server = self.servers.pick()
        if server is None:
            return None
        try:
            async with asyncio.timeout(self.settings.cloud.request_timeout_s):
                headers = {"Accept": wire.JSON, "User-Agent": "yurthub"}
                async with self.node_session.get(server + path, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        log.info("cloud GET refused path=%s status=%d body=%r", path, resp.status, body[:200])
                        return None
                    return body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.info("cloud GET failed path=%s error=%s", path, type(exc).__name__)
            return None

    def cloud_changed(self) -> None:
        """Called when the cloud as a whole went away or came back."""
        if self.servers.is_healthy:
            self.cloud_back.set()
            self.cloud_back = asyncio.Event()
        else:
            for abort in list(self.inflight):
                abort()

    async def in_writer(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def record(self, what: str, fn: Callable[..., Any], *args: Any, held: budget.Hold | None = None) -> None:
        """Queue a cache write on the writer thread and return at once: the client never waits for the disk.

        Writes run one at a time in the order queued, so a list and the watch events after it apply in
        order. Past `MAX_PENDING_WRITES` queued writes the caller waits for the oldest (backpressure instead
        of unbounded memory). A failure is counted and logged, never raised to the client. `held` (the
        bytes buffered for this write) is released once the write is done, whatever its outcome; after a
        write of at least `memory.TRIM_AFTER` bytes the writer gives the freed heap back (`memory`).
        """
        if held is not None and held.size >= memory.TRIM_AFTER:
            fn = memory.then_give_back(fn)  # a big body leaves freed pages behind: give them back after
        try:
            while len(self.pending) >= MAX_PENDING_WRITES:
                await asyncio.wait(set(self.pending), return_when=asyncio.FIRST_COMPLETED)
            future = asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)
        except BaseException:
            if held is not None:
                held.release()
            raise
        self.pending.add(future)
        future.add_done_callback(lambda f: self._written(what, f, held))

    def _written(self, what: str, future: asyncio.Future[Any], held: budget.Hold | None = None) -> None:
        self.pending.discard(future)
        if held is not None:
            held.release()
        exc = future.exception() if not future.cancelled() else None
        if exc is None:
            self.cache_writable = True
            self.metrics.cache_writable.set(1)
        elif isinstance(exc, errors.StorageError):
            self.last_lists.clear()  # what was not stored must be written again when it comes again
            self.cache_writable = False
            self.metrics.cache_writable.set(0)
            self.metrics.cache_write_errors.labels("storage").inc()
            log.error("cache write failed what=%s error=%s", what, exc)
        elif isinstance(exc, errors.WireFormatError | ValueError | UnicodeDecodeError):
            self.metrics.cache_write_errors.labels("malformed").inc()
            log.warning("not caching a malformed response what=%s error=%s", what, exc)
        else:
            self.metrics.cache_write_errors.labels("bug").inc()
            log.error("cache write crashed what=%s", what, exc_info=exc)

    def spawn_close(self, session: aiohttp.ClientSession) -> None:
        """Close a retired session in the background (held here so the task is not lost)."""
        task = asyncio.ensure_future(session.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    @staticmethod
    def digest(body: bytes) -> bytes:
        """What `list_changed` compares; hashing releases the GIL, so a caller can run it in a thread."""
        return hashlib.blake2b(body, digest_size=16).digest()

    def list_changed(self, key: object, body: bytes, digest: bytes | None = None) -> bool:
        """False when this exact list was the last one stored for its view: nothing to write again.

        At most `max_list_digests` views are remembered; the least recently listed is forgotten first (its
        next list is simply written again). When the storage has removed views since the last call (eviction,
        idle token scopes), every digest is forgotten: which views went is not known here, and a removed view
        whose list the cloud keeps sending unchanged would otherwise never be stored again. `digest`, when
        given, is `digest(body)` computed already (in a thread: a list of megabytes takes milliseconds)."""
        forgotten = self.store.forgotten()
        if forgotten != self._forgotten:
            self._forgotten = forgotten
            self.last_lists.clear()
        digest = self.digest(body) if digest is None else digest
        if self.last_lists.get(key) == digest:
            self.last_lists.move_to_end(key)
            return False
        self.last_lists[key] = digest
        self.last_lists.move_to_end(key)
        while len(self.last_lists) > self.settings.limits.max_list_digests:
            self.last_lists.popitem(last=False)
        return True
