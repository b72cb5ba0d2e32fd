"""Where `servicetopology` learns which Services ask for a topology and which nodes share this node's pool.

yurthub asks the cloud itself, with the node's identity: its own Node (for its pool label), the pool's
NodePool (`apps.openyurt.io/v1beta2`, whose `status.nodes` yurt-manager keeps: the members), and the Services
(only the `openyurt.io/topologyKeys` annotations are kept). Stock Node authorization lets a node read Services
and its own Node; `yurtctl convert` grants every node `get` (only) on NodePools (ClusterRole `yurt-hub-nodepools`),
so pool topology needs nothing more. Only when no NodePool can be read (none by that name, or no such CRD
or right, as before convert) does yurthub fall back to listing the nodes carrying the pool label, which
needs `list` on nodes (README); without that either the pool is this node alone. Which source is used is
logged once, when it changes.

Asking directly, rather than reading what other components cached, means the answer never depends
on which component listed what first (kube-proxy lists Services and EndpointSlices at the same moment) or on
which components are cache agents.

Facts are refreshed at most every `TTL_S` while filtered EndpointSlice traffic flows, one refresh at a time.
A failed refresh is retried only after a backoff (`BACKOFF_S`, doubling up to `TTL_S`), not on every request
and every watch chunk; meanwhile the last known facts are used.
The last good facts are kept in the cache (component `yurthub`), so a yurthub that restarts while the cloud
is flaky filters as before. Offline nothing needs them: offline answers come from the cache, which holds
responses already filtered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from yurthub import errors, storage, wire
from yurthub.filters import TOPOLOGY_ANNOTATION, Facts

log = logging.getLogger(__name__)

TTL_S = 30.0
BACKOFF_S = 1.0
"""Wait after a first failed refresh; it doubles with every failure in a row, up to `TTL_S`."""
NODEPOOLS = "/apis/apps.openyurt.io/v1beta2/nodepools"
SCOPE = storage.Scope("yurthub", wire.Encoding.JSON, "facts.servicetopology")
Fetch = Callable[[str], Awaitable[bytes | None]]
"""GET a path from the cloud with the node's identity, as JSON; None when it could not be had."""
InStore = Callable[..., Awaitable[object]]
"""Run a storage call where storage calls run (the cache's writer thread)."""


class FactsSource:
    def __init__(
        self,
        node_name: str,
        pool_label: str,
        store: storage.Storage,
        fetch: Fetch,
        in_store: InStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.retry_at = float("-inf")
        self.failures = 0
        self.node_name = node_name
        self.pool_label = pool_label
        self.store = store
        self.fetch = fetch
        self.in_store = in_store
        self.facts: Facts | None = None
        self.fetched_at = float("-inf")
        self.lock = asyncio.Lock()
        self.pool_source = ""
        """Where the pool's members came from last: "nodepool", "labels" or "node-only" (logged on change)."""

    async def get(self) -> Facts | None:
        """Fresh facts if the cloud gives them, else the last known ones (from memory or the cache)."""
        async with self.lock:
            now = self.clock()
            if now - self.fetched_at < TTL_S or now < self.retry_at:
                return self.facts
            fresh = await self.gather()
            if fresh is not None:
                self.failures = 0
                self.fetched_at = self.clock()
                if fresh != self.facts:
                    log.info(
                        "service topology facts node=%s pool_nodes=%d annotated_services=%d",
                        self.node_name,
                        len(fresh.pool_nodes),
                        len(fresh.topology),
                    )
                    await self.in_store(self.store.put_object, SCOPE, wire.Obj("", "facts", "", fresh.to_json()))
                self.facts = fresh
                return fresh
            self.retry_at = self.clock() + min(TTL_S, BACKOFF_S * 2**self.failures)
            self.failures += 1
            if self.facts is None:
                body = await self.in_store(self.store.get_object, SCOPE, "", "facts")
                if isinstance(body, bytes):
                    try:
                        self.facts = Facts.from_json(body)
                    except errors.WireFormatError as exc:
                        log.warning("ignoring stored topology facts error=%s", exc)
            return self.facts

    async def gather(self) -> Facts | None:
        node = await self.fetch(f"/api/v1/nodes/{quote(self.node_name)}")
        services = await self.fetch("/api/v1/services")
        if node is None or services is None:
            return None
        try:
            labels = json.loads(node).get("metadata", {}).get("labels") or {}
            pool = labels.get(self.pool_label, "")
            members = await self.pool_members(pool) if pool else frozenset()
            topology = {}
            for item in json.loads(services).get("items") or []:
                meta = item.get("metadata") or {}
                key = (meta.get("annotations") or {}).get(TOPOLOGY_ANNOTATION)
                if key:
                    topology[(meta.get("namespace", ""), meta.get("name", ""))] = str(key)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cannot read topology facts from the cloud error=%s", exc)
            return None
        return Facts(self.node_name, members | {self.node_name} if pool else frozenset(), topology)

    async def pool_members(self, pool: str) -> frozenset[str]:
        """The pool's members: the NodePool's `status.nodes`, else the nodes labelled into it, else none."""
        members: frozenset[str] = frozenset()
        source = "node-only"
        body = await self.fetch(f"{NODEPOOLS}/{quote(pool, safe='')}")
        if body is not None:
            members, source = (
                frozenset(str(n) for n in (json.loads(body).get("status") or {}).get("nodes") or []),
                "nodepool",
            )
        else:
            selector = quote(f"{self.pool_label}={pool}", safe="")
            nodes = await self.fetch(f"/api/v1/nodes?labelSelector={selector}")
            if nodes is not None:
                members = frozenset(i["metadata"]["name"] for i in json.loads(nodes).get("items") or [])
                source = "labels"
        if source != self.pool_source:
            self.pool_source = source
            if source == "node-only":
                log.warning(
                    "cannot read NodePool %s nor list the nodes of that pool: servicetopology keeps this node only",
                    pool,
                )
            else:
                log.info("servicetopology reads pool=%s members from source=%s", pool, source)
        return members
