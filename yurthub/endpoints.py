"""EndpointSlices and Endpoints kept true offline for this node's own pods.

Pure: no I/O. While the cloud is away nobody in the cloud rewrites a Service's endpoints, yet kubelet does
learn this node's pods' new addresses and readiness (after an offline reboot every pod has a new IP). So
when an offline status patch changes a pod, `rewrite_slice` and `rewrite_endpoints` bring each cached
endpoint that names that pod (by `targetRef`) in line with it, the way the EndpointSlice controller would
(`k8s.io/endpointslice` `podToEndpoint`):

- only endpoints whose `targetRef` is a Pod of this node (the cached pod's `spec.nodeName` is `node`), with
  the same uid when both carry one: other nodes' endpoints are the cloud's business and stay as they were;
- `addresses`: the pod's `status.podIPs` of the slice's `addressType` family (unchanged when the pod has
  none of that family yet: the endpoint is then not ready);
- `conditions`: `serving` = the pod's `Ready` condition is True, `terminating` = the pod has a
  `deletionTimestamp`, `ready` = serving and not terminating. (`publishNotReadyAddresses` Services, whose
  endpoints are ready regardless, are recognised by an endpoint that was ready while its pod was not.)

Endpoints (v1) addresses move between `addresses` and `notReadyAddresses` by the same readiness, with the
pod's IP of the address's family. A function returns None when nothing changed, else a changed copy (its
input is never mutated); the caller serves a changed object as JSON with a resourceVersion one past the
cached one (`podstatus.next_version`).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

Doc = dict[str, Any]
PodKey = tuple[str, str]
"""(namespace, name) of a pod."""


def _map(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(doc, "metadata")


def _family(address: str) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    except ValueError:
        return ""


def pod_ips(pod: Mapping[str, Any], family: str) -> list[str]:
    """The pod's addresses of one family (`IPv4`/`IPv6`), in its `status.podIPs` order."""
    status = _map(pod, "status")
    ips = [e.get("ip", "") for e in status.get("podIPs") or [] if isinstance(e, dict)]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return [ip for ip in ips if _family(ip) == family]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = _map(pod, "status")
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(_meta(pod).get("deletionTimestamp"))


def local_pod(ref: Any, namespace: str, node: str, pods: Mapping[PodKey, Doc]) -> Doc | None:
    """The cached pod a `targetRef` names, if it runs on `node` (and is the same pod, by uid)."""
    if not isinstance(ref, dict) or ref.get("kind") != "Pod":
        return None
    pod = pods.get((str(ref.get("namespace") or namespace), str(ref.get("name", ""))))
    if pod is None:
        return None
    if _map(pod, "spec").get("nodeName") != node:
        return None
    uid = _meta(pod).get("uid")
    if ref.get("uid") and uid and ref.get("uid") != uid:
        return None
    return pod


def rewrite_slice(eps: Doc, node: str, pods: Mapping[PodKey, Doc]) -> Doc | None:
    """An EndpointSlice with this node's pods' endpoints made true to `pods`; None when already true."""
    family = eps.get("addressType", "")
    namespace = str(_meta(eps).get("namespace", ""))
    endpoints = eps.get("endpoints") or []
    out: list[Any] = []
    changed = False
    for endpoint in endpoints:
        pod = local_pod(endpoint.get("targetRef") if isinstance(endpoint, dict) else None, namespace, node, pods)
        if pod is None:
            out.append(endpoint)
            continue
        new = copy.deepcopy(endpoint)
        ips = pod_ips(pod, family) if family in ("IPv4", "IPv6") else []
        if ips:
            new["addresses"] = ips[:1] if len(endpoint.get("addresses") or []) <= 1 else ips
        serving = pod_ready(pod) and bool(ips)
        terminating = _terminating(pod)
        conditions = _map(endpoint, "conditions")
        publish_not_ready = conditions.get("ready", True) is not False and conditions.get("serving") is False
        new_conditions = dict(conditions)
        new_conditions["ready"] = (serving or publish_not_ready) and not terminating
        new_conditions["serving"] = serving
        new_conditions["terminating"] = terminating
        if not terminating and "terminating" not in conditions:
            del new_conditions["terminating"]
        new["conditions"] = new_conditions
        changed = changed or new != endpoint
        out.append(new)
    if not changed:
        return None
    result = copy.deepcopy(eps)
    result["endpoints"] = out
    return result


def rewrite_endpoints(eps: Doc, node: str, pods: Mapping[PodKey, Doc]) -> Doc | None:
    """An Endpoints object with this node's pods' addresses made true to `pods`; None when already true."""
    namespace = str(_meta(eps).get("namespace", ""))
    subsets = eps.get("subsets") or []
    new_subsets: list[Any] = []
    changed = False
    for subset in subsets:
        if not isinstance(subset, dict):
            new_subsets.append(subset)
            continue
        ready: list[Any] = []
        not_ready: list[Any] = []
        for was_ready, address in [(True, a) for a in subset.get("addresses") or []] + [
            (False, a) for a in subset.get("notReadyAddresses") or []
        ]:
            pod = local_pod(address.get("targetRef") if isinstance(address, dict) else None, namespace, node, pods)
            if pod is None:
                (ready if was_ready else not_ready).append(address)
                continue
            ips = pod_ips(pod, _family(str(address.get("ip", ""))))
            new = dict(address)
            if ips:
                new["ip"] = ips[0]
            is_ready = pod_ready(pod) and bool(ips) and not _terminating(pod)
            changed = changed or new != address or is_ready != was_ready
            (ready if is_ready else not_ready).append(new)
        new_subset = {k: v for k, v in subset.items() if k not in ("addresses", "notReadyAddresses")}
        if ready:
            new_subset["addresses"] = ready
        if not_ready:
            new_subset["notReadyAddresses"] = not_ready
        new_subsets.append(new_subset)
    if not changed:
        return None
    result = copy.deepcopy(eps)
    result["subsets"] = new_subsets
    return result
