"""Which endpoints of pods on autonomous nodes stay ready while their node is unreachable: a pure decision,
no I/O.

Why this is needed: when a node stops reporting, the node lifecycle controller sets its Ready condition to
Unknown and then sets every pod's `Ready` condition to False (only that condition: its reason, the pod's
`ContainersReady` and the readiness-gate conditions are left as kubelet last reported them). The
EndpointSlice and Endpoints controllers then take those pods out of every Service, so the other nodes of the
same site, which still reach the cloud, stop sending traffic to pods that are fine. For an autonomous node
(`tolerations.autonomy_of`) that is the wrong answer while the node is only unreachable.

The rule (`keep`): an endpoint is kept ready when
- its node is autonomous, its Ready condition is not True, and it has been so for less than the node's
  autonomy duration (forever when none), counted from that condition's `lastTransitionTime`;
- its target is a Pod in the same namespace as the object, whose uid is the endpoint's, that runs on that
  node, is not terminating and is in phase Running;
- the address is one of that pod's `podIPs`;
- kubelet's last word was "ready": `ContainersReady` is True and every readiness gate's condition is True.
  That is exactly kubelet's Ready computation, so a pod that kubelet itself reported not ready (a failing
  probe, a crashing container) is never kept; only the lifecycle controller's blanket False is undone.

Every fact comes from the Node and Pod objects handed in (the apiserver's own, read by the shell), never from
the object being admitted beyond which endpoint names which pod: a forged endpoint gains nothing it could
not have written itself.

Two uses: `admit_slice` / `admit_endpoints` only ever turn not-ready into ready (the admission webhook, on
the controllers' own writes); `reconcile_slice` / `reconcile_endpoints` decide both ways for yurt-manager's
pass: ready for what must be kept (a write the webhook missed), and back to what the stock controllers would
write (not ready, not serving) for a ready endpoint whose node is still not Ready, whose pod's Ready condition
is not True and which is no longer kept (autonomy lapsed or turned off), since nothing else makes them write
again. Terminating endpoints are never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from converter import tolerations

Obj = dict[str, Any]
PodKey = tuple[str, str]
"""(namespace, name) of a pod."""

SLICE_MANAGED_BY = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
"""The label the EndpointSlice controller puts on the slices it manages (mirrored and hand-made slices are
not ours to change)."""
ENDPOINTS_WRITERS = (
    "system:serviceaccount:kube-system:endpoint-controller",
    "system:kube-controller-manager",
)
"""Who writes the Endpoints controller's Endpoints (its own service account with
`--use-service-account-credentials`, the controller-manager's identity without). Those Endpoints carry no
label of their own (they copy the Service's), so the webhook is narrowed by writer, and the pass by Service:
only Endpoints of a Service with a selector are the controller's."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One endpoint address as the object names it: what the shell must read to decide."""

    node: str
    pod: PodKey
    uid: str
    ip: str


def _time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _condition(obj: Obj, kind: str) -> Obj | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def node_keeps(node: Obj | None, now: float) -> bool:
    """Whether pods on `node` may be kept in their Services now: autonomous, not Ready, within its duration."""
    autonomy = tolerations.autonomy_of(node)
    if node is None or autonomy is None:
        return False
    ready = _condition(node, "Ready")
    if ready is None or ready.get("status") == "True":
        return False  # reachable (or never reported): kubelet's word on its pods stands
    if autonomy.seconds is None:
        return True
    since = _time(ready.get("lastTransitionTime"))
    return since is not None and now - since < autonomy.seconds


def kubelet_said_ready(pod: Obj) -> bool:
    """kubelet's own readiness of `pod`: containers ready and every readiness gate true (the Ready condition
    itself may have been overwritten by the node lifecycle controller)."""
    containers = _condition(pod, "ContainersReady")
    if containers is None or containers.get("status") != "True":
        return False
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    for gate in gates:
        cond = _condition(pod, str(gate.get("conditionType", "")))
        if cond is None or cond.get("status") != "True":
            return False
    return True


def unreachable(node: Obj | None) -> bool:
    """Whether the node exists and its Ready condition is not True (what makes the lifecycle controller mark
    its pods not ready)."""
    ready = _condition(node or {}, "Ready")
    return node is not None and (ready is None or ready.get("status") != "True")


def _released(target: Target, nodes: Mapping[str, Obj], pods: Mapping[PodKey, Obj], now: float) -> bool:
    """Whether a ready endpoint goes back to the stock answer: its node is unreachable (so the lifecycle
    controller made its pod not ready), the pod's Ready condition is not True, and it is no longer kept."""
    pod = pods.get(target.pod)
    return (
        pod is not None
        and unreachable(nodes.get(target.node))
        and not pod_ready(pod)
        and not keep(target, nodes, pods, now)
    )


def pod_ready(pod: Obj | None) -> bool:
    """The pod's Ready condition as the API shows it (what the stock controllers go by)."""
    cond = _condition(pod or {}, "Ready")
    return cond is not None and cond.get("status") == "True"


def keep(target: Target, nodes: Mapping[str, Obj], pods: Mapping[PodKey, Obj], now: float) -> bool:
    """Whether the endpoint `target` stays ready although its pod's Ready condition is not True."""
    node = nodes.get(target.node)
    pod = pods.get(target.pod)
    if pod is None or not node_keeps(node, now):
        return False
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if not target.uid or meta.get("uid") != target.uid or meta.get("deletionTimestamp"):
        return False
    if spec.get("nodeName") != target.node or status.get("phase") != "Running":
        return False
    ips = {str(p.get("ip")) for p in status.get("podIPs") or []} | {str(status.get("podIP") or "")}
    if not target.ip or target.ip not in ips:
        return False
    return kubelet_said_ready(pod)


def _pod_ref(ref: Obj | None, namespace: str) -> tuple[PodKey, str] | None:
    """The pod an endpoint's targetRef names, if it is a Pod in the object's own namespace."""
    if not ref or ref.get("kind") != "Pod" or not ref.get("name"):
        return None
    if ref.get("namespace", namespace) != namespace:
        return None
    return (namespace, str(ref["name"])), str(ref.get("uid") or "")


def slice_targets(slice_: Obj) -> list[tuple[int, Target]]:
    """The endpoints of an EndpointSlice that name a pod and a node, by index (first address only: a pod's
    endpoint carries one address, as kube-proxy reads it)."""
    namespace = str((slice_.get("metadata") or {}).get("namespace") or "")
    out = []
    for i, ep in enumerate(slice_.get("endpoints") or []):
        ref = _pod_ref(ep.get("targetRef"), namespace)
        addresses = ep.get("addresses") or []
        if ref is None or not ep.get("nodeName") or not addresses:
            continue
        out.append((i, Target(str(ep["nodeName"]), ref[0], ref[1], str(addresses[0]))))
    return out


def endpoints_targets(endpoints: Obj) -> list[tuple[int, str, int, Target]]:
    """The addresses of an Endpoints object that name a pod and a node: (subset, list, index, target), the
    list being `addresses` or `notReadyAddresses`."""
    namespace = str((endpoints.get("metadata") or {}).get("namespace") or "")
    out = []
    for s, subset in enumerate(endpoints.get("subsets") or []):
        for field in ("addresses", "notReadyAddresses"):
            for i, address in enumerate(subset.get(field) or []):
                ref = _pod_ref(address.get("targetRef"), namespace)
                if ref is None or not address.get("nodeName"):
                    continue
                out.append((s, field, i, Target(str(address["nodeName"]), ref[0], ref[1], str(address.get("ip")))))
    return out


def candidate_nodes(targets: list[Target], nodes: Mapping[str, Obj], now: float) -> set[str]:
    """Of the nodes the targets name, those whose pods may be kept now (only their pods need reading)."""
    return {t.node for t in targets if node_keeps(nodes.get(t.node), now)}


def _slice_conditions(
    slice_: Obj,
    nodes: Mapping[str, Obj],
    pods: Mapping[PodKey, Obj],
    now: float,
    *,
    release: bool,
    publish_not_ready: bool = False,
) -> dict[int, Obj]:
    """The new `conditions` of the endpoints to change, by index."""
    endpoints = slice_.get("endpoints") or []
    changed: dict[int, Obj] = {}
    for i, target in slice_targets(slice_):
        conditions: Obj = dict(endpoints[i].get("conditions") or {})
        if conditions.get("terminating") is True:
            continue  # going away: the stock answer stands
        ready = conditions.get("ready")
        if ready is False and keep(target, nodes, pods, now):
            changed[i] = {**conditions, "ready": True, "serving": True}
        elif release and ready is True and not publish_not_ready and _released(target, nodes, pods, now):
            changed[i] = {**conditions, "ready": False, "serving": False}
    return changed


def admit_slice(slice_: Obj, nodes: Mapping[str, Obj], pods: Mapping[PodKey, Obj], now: float) -> list[Obj]:
    """JSON Patch operations that turn the kept endpoints of `slice_` ready (and serving); [] for none."""
    endpoints = slice_.get("endpoints") or []
    ops: list[Obj] = []
    for i, conditions in sorted(_slice_conditions(slice_, nodes, pods, now, release=False).items()):
        op = "replace" if "conditions" in endpoints[i] else "add"
        ops.append({"op": op, "path": f"/endpoints/{i}/conditions", "value": conditions})
    return ops


def reconcile_slice(
    slice_: Obj, nodes: Mapping[str, Obj], pods: Mapping[PodKey, Obj], now: float, *, publish_not_ready: bool
) -> Obj | None:
    """The slice as it should be (kept endpoints ready; endpoints kept before and no longer kept back to not
    ready and not serving, as the EndpointSlice controller writes them), or None when it already is.
    `publish_not_ready`: the Service publishes not-ready addresses, so ready is the stock answer anyway."""
    changed = _slice_conditions(slice_, nodes, pods, now, release=True, publish_not_ready=publish_not_ready)
    if not changed:
        return None
    out = copy.deepcopy(slice_)
    for i, conditions in changed.items():
        out["endpoints"][i]["conditions"] = conditions
    return out


def _address_order(address: Obj) -> tuple[str, str]:
    """The Endpoints controller's order of addresses within a subset: by IP, then by the target's uid."""
    return (str(address.get("ip", "")), str((address.get("targetRef") or {}).get("uid", "")))


def _moved_subsets(endpoints: Obj, to_ready: set[tuple[int, int]], to_not_ready: set[tuple[int, int]]) -> list[Obj]:
    """Subsets with the addresses at (subset, index) of `notReadyAddresses` moved to `addresses` and those of
    `addresses` moved back, each list in the controller's order."""
    out = []
    for s, subset in enumerate(endpoints.get("subsets") or []):
        ready = [a for i, a in enumerate(subset.get("addresses") or []) if (s, i) not in to_not_ready]
        ready += [a for i, a in enumerate(subset.get("notReadyAddresses") or []) if (s, i) in to_ready]
        not_ready = [a for i, a in enumerate(subset.get("notReadyAddresses") or []) if (s, i) not in to_ready]
        not_ready += [a for i, a in enumerate(subset.get("addresses") or []) if (s, i) in to_not_ready]
        new = {k: v for k, v in subset.items() if k not in ("addresses", "notReadyAddresses")}
        if ready:
            new["addresses"] = sorted(ready, key=_address_order)
        if not_ready:
            new["notReadyAddresses"] = sorted(not_ready, key=_address_order)
        out.append(new)
    return out


def _endpoints_moves(
    endpoints: Obj,
    nodes: Mapping[str, Obj],
    pods: Mapping[PodKey, Obj],
    now: float,
    *,
    release: bool,
    publish_not_ready: bool = False,
) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    to_ready: set[tuple[int, int]] = set()
    to_not_ready: set[tuple[int, int]] = set()
    for s, field, i, target in endpoints_targets(endpoints):
        if field == "notReadyAddresses":
            if keep(target, nodes, pods, now):
                to_ready.add((s, i))
        elif release and not publish_not_ready and _released(target, nodes, pods, now):
            to_not_ready.add((s, i))
    return to_ready, to_not_ready


def admit_endpoints(endpoints: Obj, nodes: Mapping[str, Obj], pods: Mapping[PodKey, Obj], now: float) -> list[Obj]:
    """JSON Patch operations moving the kept addresses of `endpoints` from `notReadyAddresses` to
    `addresses`; [] for none."""
    to_ready, _ = _endpoints_moves(endpoints, nodes, pods, now, release=False)
    if not to_ready:
        return []
    return [{"op": "replace", "path": "/subsets", "value": _moved_subsets(endpoints, to_ready, set())}]


def reconcile_endpoints(
    endpoints: Obj, nodes: Mapping[str, Obj], pods: Mapping[PodKey, Obj], now: float, *, publish_not_ready: bool
) -> Obj | None:
    """`endpoints` as it should be (see `reconcile_slice`), or None when it already is."""
    to_ready, to_not_ready = _endpoints_moves(
        endpoints, nodes, pods, now, release=True, publish_not_ready=publish_not_ready
    )
    if not to_ready and not to_not_ready:
        return None
    out = copy.deepcopy(endpoints)
    out["subsets"] = _moved_subsets(endpoints, to_ready, to_not_ready)
    return out
