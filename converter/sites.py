"""`yurtctl get pools` and `yurtctl get yurtappsets`: the edge by site, as text, from objects (no I/O).

A pool's row counts the nodes labelled `apps.openyurt.io/nodepool=<pool>`:
- READY / UNREADY: the NodeReady condition True / anything else;
- AUTONOMOUS: nodes whose pods yurt-manager keeps through an outage (`tolerations.autonomy_of`: an edge
  node with the autonomy annotation or an autonomy duration);
- OFFLINE: nodes whose NodeReady is `Unknown`, i.e. the node controller stopped hearing from them. yurthub
  publishes nothing to the cloud of its own; while a node's yurthub cannot reach the cloud it answers the
  kubelet's Lease and status locally, so the cloud sees exactly this: the node's status and Lease stop
  being renewed and its Ready turns Unknown. So OFFLINE is the nodes whose hub is cut off from the cloud (or
  that are down: from the cloud the two look the same), and `OFFLINE` among `AUTONOMOUS` ones keep their pods.
and the YurtAppSets that select the pool, each with its workload's state there (from the YurtAppSet's
`status.poolStatus`): `ready`, `updating` (not yet on its pool's revision), `unready`, or `pending` (no
workload yet). Pools that only exist as a node label (no NodePool object) are shown with type `-`; nodes in
no pool are counted in a last row `<none>`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from converter import appset, tolerations

Obj = dict[str, Any]
NO_POOL = "<none>"


@dataclasses.dataclass(frozen=True)
class PoolRow:
    name: str
    type: str
    nodes: int
    ready: int
    unready: int
    autonomous: int
    offline: int
    appsets: tuple[str, ...]
    """`<namespace>/<name>:<state>` of each YurtAppSet that selects the pool."""


def _ready(node: Obj) -> str:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status", "Unknown"))
    return "Unknown"


def _state(yas: Obj, pool: str) -> str:
    for entry in (yas.get("status") or {}).get("poolStatus") or []:
        if entry.get("pool") == pool:
            if not entry.get("updated"):
                return "updating"
            return "ready" if entry.get("ready") else "unready"
    return "pending"


def pool_rows(nodes: list[Obj], pools: list[Obj], yases: list[Obj]) -> list[PoolRow]:
    """One row per NodePool or pool label, sorted by name, then `<none>` if some nodes are in no pool."""
    members: dict[str, list[Obj]] = {}
    for node in nodes:
        label = ((node.get("metadata") or {}).get("labels") or {}).get(appset.NODEPOOL_LABEL) or NO_POOL
        members.setdefault(label, []).append(node)
    objects = {p["metadata"]["name"]: p for p in pools}
    rows = []
    for name in sorted(set(objects) | (set(members) - {NO_POOL})) + ([NO_POOL] if NO_POOL in members else []):
        inside = members.get(name, [])
        states = [_ready(n) for n in inside]
        pool = objects.get(name)
        selecting = [y for y in yases if pool is not None and pool in appset.selected_pools(y, [pool])]
        rows.append(
            PoolRow(
                name=name,
                type=str(((pool or {}).get("spec") or {}).get("type") or "-"),
                nodes=len(inside),
                ready=states.count("True"),
                unready=len(inside) - states.count("True"),
                autonomous=sum(tolerations.autonomy_of(n) is not None for n in inside),
                offline=states.count("Unknown"),
                appsets=tuple(
                    f"{y['metadata'].get('namespace', '')}/{y['metadata']['name']}:{_state(y, name)}"
                    for y in sorted(
                        selecting, key=lambda y: (y["metadata"].get("namespace", ""), y["metadata"]["name"])
                    )
                ),
            )
        )
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, separated by three spaces, like kubectl's."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines) + "\n"


def render_pools(rows: list[PoolRow]) -> str:
    headers = ["POOL", "TYPE", "NODES", "READY", "UNREADY", "AUTONOMOUS", "OFFLINE", "YURTAPPSETS"]
    cells = [
        [
            r.name,
            r.type,
            str(r.nodes),
            str(r.ready),
            str(r.unready),
            str(r.autonomous),
            str(r.offline),
            ",".join(r.appsets) or "-",
        ]
        for r in rows
    ]
    return table(headers, cells)


def render_appsets(yases: list[Obj]) -> str:
    """One row per YurtAppSet: its pools' counts and the conditions that are not True (what to look at)."""
    headers = ["NAMESPACE", "NAME", "TOTAL", "READY", "UPDATED", "REVISION", "PROBLEMS"]
    cells = []
    for y in sorted(yases, key=lambda y: (y["metadata"].get("namespace", ""), y["metadata"]["name"])):
        st = y.get("status") or {}
        problems = [
            f"{c.get('type')}={c.get('reason')}" for c in st.get("conditions") or [] if c.get("status") != "True"
        ]
        cells.append(
            [
                str(y["metadata"].get("namespace", "")),
                str(y["metadata"]["name"]),
                str(st.get("totalWorkloads", 0)),
                str(st.get("readyWorkloads", 0)),
                str(st.get("updatedWorkloads", 0)),
                str(st.get("currentRevision", "-")),
                ",".join(problems) or "-",
            ]
        )
    return table(headers, cells)
