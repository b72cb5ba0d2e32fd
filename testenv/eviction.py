"""Whether the cloud evicts a node's pods, as autonomy tests ask it: the NoExecute tolerations a pod carries,
how long its node has carried a not-ready or unreachable NoExecute taint, and whether the pod was evicted."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from testenv.kubectl import KubectlError

if TYPE_CHECKING:
    from testenv.cluster import Cluster


def tolerations(kube: Cluster, pod: str) -> dict[str, Any]:
    """The pod's NoExecute tolerations (namespace `default`): taint key -> tolerationSeconds (None: forever)."""
    p = kube.kubectl.get("pod", pod)
    return {t["key"]: t.get("tolerationSeconds") for t in p["spec"]["tolerations"] if t.get("effect") == "NoExecute"}


def evicted(kube: Cluster, pod: str) -> bool:
    """Whether the pod (namespace `default`) is being deleted or is gone."""
    try:
        return bool(kube.kubectl.get("pod", pod)["metadata"].get("deletionTimestamp"))
    except KubectlError:
        return True  # gone


def tainted_for(kube: Cluster, node: str) -> float:
    """Seconds since the node got its oldest not-ready/unreachable NoExecute taint (0: none)."""
    taints = kube.kubectl.get("node", node)["spec"].get("taints") or []
    added = [
        datetime.datetime.fromisoformat(t["timeAdded"].replace("Z", "+00:00"))
        for t in taints
        if t.get("effect") == "NoExecute" and t.get("timeAdded")
    ]
    if not added:
        return 0.0
    return (datetime.datetime.now(datetime.UTC) - min(added)).total_seconds()
