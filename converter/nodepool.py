"""NodePool membership, as data: what each node should carry, what each pool's status should say. No I/O.

A node is in the pool its label `apps.openyurt.io/nodepool` names (OpenYurt's rule). A member carries the
pool's `spec.labels`, `spec.annotations` and `spec.taints` (the pool's value wins over a node's own for the
same key; taints are matched by key and effect). What was applied is recorded on the node in the annotation
`nodepool.openyurt.io/previous-attributes` (OpenYurt's name and JSON shape), so that when the pool's spec
changes, the node leaves, moves to another pool or its pool is deleted, exactly what the pool put there is
taken off again: a label or annotation only while it still has the value the pool gave it (one changed since
is somebody else's), a taint by key and effect. (OpenYurt leaves a departed node's attributes in place.)

A pool's `spec.labels` and `spec.annotations` never set the membership label, `openyurt.io/is-edge-worker` or
the record itself (`RESERVED`: ignored). A hostNetwork pool also labels its members
`nodepool.openyurt.io/hostnetwork=true`, as OpenYurt's node webhook does.

What cannot work is refused, not half done:
- a node whose `openyurt.io/is-edge-worker` label contradicts its pool's type (`true` in a Cloud pool,
  `false` in an Edge pool) is not a member: it gets none of the pool's attributes, is not in `status.nodes`
  (so no Service topology counts it in), and the pool's condition `NodesConform` is False with reason
  `TypeMismatch` naming it;
- a node whose label names a pool that does not exist carries no pool attributes (`Problem` "PoolNotFound");
- a node "in two pools" cannot be expressed with one label. OpenYurt refuses changing the label's value with a
  webhook; without one, a changed value is a move: leave the old pool (its attributes come off), join the new.
  `apps.openyurt.io/desired-nodepool` is not read (OpenYurt's mutating webhook copies it into the label).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

Obj = dict[str, Any]

GROUP = "apps.openyurt.io"
VERSION = "v1beta2"
COLLECTION = f"/apis/{GROUP}/{VERSION}/nodepools"
POOL_LABEL = "apps.openyurt.io/nodepool"
"""Node label naming the node's pool."""
PREVIOUS = "nodepool.openyurt.io/previous-attributes"
"""Node annotation: JSON `{"labels":…, "annotations":…, "taints":…}` the pool last applied."""
EDGE_WORKER_LABEL = "openyurt.io/is-edge-worker"
HOSTNETWORK_LABEL = "nodepool.openyurt.io/hostnetwork"
"""Node label "true" on the members of a pool with `spec.hostNetwork: true`."""
RESERVED = frozenset({POOL_LABEL, EDGE_WORKER_LABEL, PREVIOUS})
"""Keys a pool's `spec.labels`/`spec.annotations` cannot put on nodes: membership itself (a pool moving its
members elsewhere), the edge-worker label its type is checked against, and yurt-manager's own record."""
CONFORM = "NodesConform"
"""Pool condition type: True when every node labelled into the pool agrees with its type."""

Taint = tuple[str, str, str]
"""(key, effect, value)."""


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What a pool puts on its members."""

    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.labels or self.annotations or self.taints)

    def to_json(self) -> str:
        taints = [{"key": k, "effect": e, **({"value": v} if v else {})} for k, e, v in self.taints]
        doc = {"labels": dict(self.labels), "annotations": dict(self.annotations), "taints": taints}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


NONE = Attributes()


def _taints(items: Iterable[Any]) -> tuple[Taint, ...]:
    out: dict[tuple[str, str], Taint] = {}
    for t in items:
        if isinstance(t, dict) and t.get("key") and t.get("effect"):
            out[(str(t["key"]), str(t["effect"]))] = (str(t["key"]), str(t["effect"]), str(t.get("value") or ""))
    return tuple(sorted(out.values()))


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def attributes_of(pool: Obj) -> Attributes:
    """The pool's labels, annotations and taints, less the keys a pool may not set (`RESERVED`), plus
    `HOSTNETWORK_LABEL=true` for a hostNetwork pool (as OpenYurt's node webhook sets it)."""
    spec = pool.get("spec") or {}
    labels = {k: v for k, v in _strings(spec.get("labels")).items() if k not in RESERVED}
    if spec.get("hostNetwork") is True:
        labels[HOSTNETWORK_LABEL] = "true"
    annotations = {k: v for k, v in _strings(spec.get("annotations")).items() if k not in RESERVED}
    return Attributes(labels, annotations, _taints(spec.get("taints") or []))


def previous_of(node: Obj) -> Attributes:
    """What the pool applied last, from the node's annotation (unreadable: nothing recorded)."""
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(PREVIOUS)
    if not raw:
        return NONE
    try:
        doc = json.loads(raw)
        return Attributes(
            _strings(doc.get("labels")), _strings(doc.get("annotations")), _taints(doc.get("taints") or [])
        )
    except (ValueError, AttributeError, TypeError):
        return NONE


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def pool_of(node: Obj) -> str:
    return str(((node.get("metadata") or {}).get("labels") or {}).get(POOL_LABEL, ""))


def type_of(pool: Obj) -> str:
    return str((pool.get("spec") or {}).get("type") or "Edge")


def conforms(pool: Obj, node: Obj) -> bool:
    """False when the node's is-edge-worker label says the opposite of the pool's type."""
    edge = ((node.get("metadata") or {}).get("labels") or {}).get(EDGE_WORKER_LABEL)
    kind = type_of(pool)
    return not ((kind == "Cloud" and edge == "true") or (kind == "Edge" and edge == "false"))


def desired(node: Obj, pools: Mapping[str, Obj]) -> Attributes:
    """What the node should carry from its pool now (nothing: no pool, a missing pool, or refused)."""
    pool = pools.get(pool_of(node))
    if pool is None or not conforms(pool, node):
        return NONE
    return attributes_of(pool)


def node_patch(node: Obj, pools: Mapping[str, Obj]) -> Obj | None:
    """A JSON merge patch bringing the node in line with its pool, or None when it is. A patch that changes
    taints carries the node's resourceVersion (the whole list is replaced: a concurrent change is a Conflict)."""
    meta = node.get("metadata") or {}
    labels, annotations = _strings(meta.get("labels")), _strings(meta.get("annotations"))
    before, want = previous_of(node), desired(node, pools)
    patch: Obj = {}

    def maps(have: dict[str, str], old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {k: None for k, v in old.items() if k not in new and have.get(k) == v}
        out.update({k: v for k, v in new.items() if have.get(k) != v})
        return out

    label_patch = maps(labels, before.labels, want.labels)
    annotation_patch = maps(annotations, before.annotations, want.annotations)
    recorded = want.to_json() if want else None
    if annotations.get(PREVIOUS) != recorded:
        annotation_patch[PREVIOUS] = recorded
    if label_patch:
        patch.setdefault("metadata", {})["labels"] = label_patch
    if annotation_patch:
        patch.setdefault("metadata", {})["annotations"] = annotation_patch
    current = [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, dict)]
    wanted = {(k, e): v for k, e, v in want.taints}
    dropped = {(k, e) for k, e, _ in before.taints} - set(wanted)
    taints: list[Obj] = []
    for t in current:
        key = (str(t.get("key", "")), str(t.get("effect", "")))
        if key in dropped:
            continue
        if key in wanted:
            value = wanted.pop(key)
            taints.append({**t, "value": value} if value else {k: v for k, v in t.items() if k != "value"})
        else:
            taints.append(t)
    taints += [{"key": k, "effect": e, **({"value": v} if v else {})} for (k, e), v in sorted(wanted.items())]
    if taints != current:
        patch.setdefault("spec", {})["taints"] = taints
        patch.setdefault("metadata", {})["resourceVersion"] = meta.get("resourceVersion")
    return patch or None


def ready(node: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


@dataclasses.dataclass(frozen=True)
class Problem:
    """A node yurt-manager will not treat as its pool's member, told once as a Warning Event on the node."""

    node: str
    pool: str
    reason: str
    message: str


def problems(nodes: Iterable[Obj], pools: Mapping[str, Obj]) -> list[Problem]:
    out = []
    for node in nodes:
        name, pool = name_of(node), pool_of(node)
        if not pool:
            continue
        if pool not in pools:
            out.append(
                Problem(
                    name,
                    pool,
                    "PoolNotFound",
                    f"node {name} is labelled {POOL_LABEL}={pool} but NodePool {pool} does not exist: "
                    "it carries no pool attributes until the pool is created or the label removed",
                )
            )
        elif not conforms(pools[pool], node):
            edge = node["metadata"]["labels"][EDGE_WORKER_LABEL]
            out.append(
                Problem(
                    name,
                    pool,
                    "TypeMismatch",
                    f"node {name} is labelled {EDGE_WORKER_LABEL}={edge} but NodePool {pool} is of type "
                    f"{type_of(pools[pool])}: it is not made a member (no pool attributes, not in status.nodes)",
                )
            )
    return sorted(out, key=lambda p: (p.node, p.reason))


def status(pool: Obj, nodes: Iterable[Obj], now: str) -> Obj:
    """The pool's status: its members (sorted), ready and not ready by the NodeReady condition, and the
    `NodesConform` condition (its lastTransitionTime kept while its status does not change). Fields and
    conditions yurt-manager does not own (leader election) are kept as they are."""
    name = name_of(pool)
    labelled = [n for n in nodes if pool_of(n) == name]
    members = sorted((n for n in labelled if conforms(pool, n)), key=name_of)
    refused = sorted(name_of(n) for n in labelled if not conforms(pool, n))
    ready_count = sum(1 for n in members if ready(n))
    if refused:
        edge = "true" if type_of(pool) == "Cloud" else "false"
        condition = {
            "type": CONFORM,
            "status": "False",
            "reason": "TypeMismatch",
            "message": f"nodes labelled {EDGE_WORKER_LABEL}={edge} in this {type_of(pool)} pool are not members: "
            + ", ".join(refused),
        }
    else:
        condition = {
            "type": CONFORM,
            "status": "True",
            "reason": "AllNodesConform",
            "message": f"every node labelled into the pool agrees with its type {type_of(pool)}",
        }
    old = dict(pool.get("status") or {})
    conditions = [c for c in old.get("conditions") or [] if c.get("type") != CONFORM]
    previous = next((c for c in old.get("conditions") or [] if c.get("type") == CONFORM), None)
    kept = previous is not None and previous.get("status") == condition["status"]
    condition["lastTransitionTime"] = previous.get("lastTransitionTime", now) if kept and previous else now
    old.update(
        {
            "readyNodeNum": ready_count,
            "unreadyNodeNum": len(members) - ready_count,
            "nodes": [name_of(n) for n in members],
            "conditions": sorted([*conditions, condition], key=lambda c: str(c.get("type"))),
        }
    )
    return old


def status_patch(pool: Obj, nodes: Iterable[Obj], now: str) -> Obj | None:
    """A merge patch for the pool's status subresource, or None when the status is already right."""
    want = status(pool, nodes, now)
    have = pool.get("status") or {}

    def same(a: Obj, b: Obj) -> bool:
        strip = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in a.get("conditions") or []]
        other = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in b.get("conditions") or []]
        keys = ("readyNodeNum", "unreadyNodeNum", "nodes")
        return strip == other and all(a.get(k) == b.get(k) for k in keys)

    if same(want, have) and "nodes" in have:
        return None
    return {"metadata": {"resourceVersion": (pool.get("metadata") or {}).get("resourceVersion")}, "status": want}
