"""core/v1 Events yurt-manager tells about the objects it looks after (`kubectl describe` lists them).

Pure: builds the object, writes nothing. One builder, so every Event yurt-manager makes names the same
source and reporting component and carries a message of bounded length.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
SOURCE = "yurt-manager"
MESSAGE_LIMIT = 1024
"""Longest message an Event carries (a Job's log tail or an apiserver refusal can be long)."""


def about(involved: Obj, namespace: str, reason: str, message: str, kind: str, now: str) -> Obj:
    """An Event of `kind` (`Normal` or `Warning`) about `involved` (an ObjectReference: apiVersion, kind, name,
    uid and, for a namespaced object, namespace), created in `namespace` at `now`."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved.get('name', '')}.", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "type": kind,
        "source": {"component": SOURCE},
        "reportingComponent": SOURCE,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def node_reference(node: Obj, name: str = "") -> Obj:
    """The ObjectReference of a Node (Events about Nodes live in `default`)."""
    meta = node.get("metadata") or {}
    return {"apiVersion": "v1", "kind": "Node", "name": name or meta.get("name", ""), "uid": meta.get("uid", "")}
