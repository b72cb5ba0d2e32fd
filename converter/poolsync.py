"""yurt-manager's NodePool pass: apply what `converter.nodepool` decides to the nodes and the pools' status.

Per pass: every node whose attributes differ from what its pool wants is patched (labels and annotations by
merge patch; a taint change replaces the list under the node's resourceVersion, so a concurrent change is
a Conflict and is decided again next pass); every pool whose status differs gets one merge patch of its
`status` subresource; each refusal (`nodepool.Problem`) is told once as a Warning Event on the node, and
again only after it went away and came back. Every write is preceded by `must_lead()`, which raises when this
replica no longer holds the Lease. Errors other than a Conflict or a vanished object are logged and counted;
the pass goes on with the next object.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from urllib.parse import quote

from converter import access, errors, events, nodepool

log = logging.getLogger(__name__)

POOLS = nodepool.COLLECTION
EVENTS = "/api/v1/namespaces/default/events"
"""Events about cluster-scoped objects (Nodes) live in `default`, as kubelet's do."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PoolSync:
    """State between passes: the refusals already told."""

    def __init__(self, api: access.Api, must_lead: Callable[[], None], counted: Callable[[str], None]) -> None:
        """`counted(what)` is called after each write ("node", "status", "event"), or with "error"."""
        self.api = api
        self.must_lead = must_lead
        self.counted = counted
        self.told: set[nodepool.Problem] = set()

    def _write(self, what: str, path: str, body: access.Obj, about: str) -> bool:
        """Patch `path` (or create in it, for an event) with `body`; whether it was written."""
        self.must_lead()
        try:
            if what == "event":
                self.api.create(path, body)
            else:
                self.api.patch(path, body)
        except (errors.Conflict, errors.NotFound):
            return False  # changed or gone meanwhile: decided again next pass
        except errors.ApiError as exc:
            log.warning("nodepool %s write refused object=%s error=%s", what, about, exc)
            self.counted("error")
            return False
        self.counted(what)
        return True

    def sync(self, nodes: Mapping[str, access.Obj], pools: list[access.Obj]) -> None:
        by_name = {nodepool.name_of(p): p for p in pools}
        for name, node in sorted(nodes.items()):
            patch = nodepool.node_patch(node, by_name)
            if patch is not None and self._write("node", f"/api/v1/nodes/{quote(name)}", patch, name):
                log.info("node attributes set from its pool node=%s pool=%s", name, nodepool.pool_of(node) or "-")
        now = _now()
        for name, pool in sorted(by_name.items()):
            body = nodepool.status_patch(pool, nodes.values(), now)
            if body is not None and self._write("status", f"{POOLS}/{quote(name)}/status", body, name):
                st = body["status"]
                log.info(
                    "nodepool status pool=%s nodes=%d ready=%d unready=%d",
                    name,
                    len(st["nodes"]),
                    st["readyNodeNum"],
                    st["unreadyNodeNum"],
                )
        problems = set(nodepool.problems(nodes.values(), by_name))
        for problem in sorted(problems - self.told, key=lambda p: (p.node, p.reason)):
            log.warning("nodepool refused node=%s pool=%s reason=%s", problem.node, problem.pool, problem.reason)
            if self._write("event", EVENTS, event(problem, nodes[problem.node], now), problem.node):
                self.told.add(problem)
        self.told &= problems


def event(problem: nodepool.Problem, node: access.Obj, now: str) -> access.Obj:
    """A Warning Event about the node a pool could not be applied to."""
    reference = events.node_reference(node, problem.node)
    return events.about(reference, "default", problem.reason, problem.message, "Warning", now)
