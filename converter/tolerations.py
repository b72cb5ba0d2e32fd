"""Which tolerations a pod on an autonomous edge node should carry: a pure decision, no I/O.

Why rewrite running pods rather than admit them differently: the DefaultTolerationSeconds admission plugin
gives every pod `node.kubernetes.io/not-ready` and `node.kubernetes.io/unreachable` NoExecute tolerations
with a finite `tolerationSeconds` at creation, and the taint-eviction controller deletes the pod once the node
has carried the taint that long. The apiserver lets a pod update add tolerations and change the
`tolerationSeconds` of an existing one, but never remove or otherwise change one
(`validateOnlyAddedTolerations`), so the seconds of the existing tolerations are exactly what can be rewritten
both ways: to "forever" (absent) while the node is autonomous, and back to the original afterwards. A pod
update re-arms the taint-eviction controller's timer for that pod, so a rewrite also saves pods whose node
is already unreachable, as long as it lands before their time is up.

The original seconds live in the pod annotations named in `names` ("" when the toleration had none);
they are removed when the originals are restored. DaemonSet pods (tolerate forever already), mirror pods
(read-only to the API) and finished or terminating pods are left alone.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from converter import names

Obj = dict[str, Any]

_KEYS = {names.NOT_READY_TAINT: names.ORIGINAL_NOT_READY, names.UNREACHABLE_TAINT: names.ORIGINAL_UNREACHABLE}
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


@dataclasses.dataclass(frozen=True)
class Autonomy:
    seconds: int | None
    """How long pods tolerate their node being unreachable; None is forever."""


def parse_duration(text: str) -> float:
    """A Go duration ("90s", "1h30m", "0") in seconds; ValueError for anything else."""
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def autonomy_of(node: Obj | None) -> Autonomy | None:
    """The node's autonomy setting, None when pods on it follow the cluster's normal eviction.

    Only edge nodes (label `openyurt.io/is-edge-worker=true`) are autonomous. `autonomy-duration` wins over
    the older boolean annotation; a duration <= 0 means forever; an unparsable duration counts as not set."""
    if node is None:
        return None
    meta = node.get("metadata", {})
    if (meta.get("labels") or {}).get(names.EDGE_WORKER_LABEL) != "true":
        return None
    annotations = meta.get("annotations") or {}
    duration = annotations.get(names.AUTONOMY_DURATION_ANNOTATION)
    if duration is not None:
        try:
            seconds = parse_duration(duration)
        except ValueError:
            duration = None
        else:
            return Autonomy(None if seconds <= 0 else int(seconds))
    if annotations.get(names.AUTONOMY_ANNOTATION) == "true":
        return Autonomy(None)
    return None


def is_managed(pod: Obj) -> bool:
    """Whether yurt-manager may touch this pod at all."""
    meta = pod.get("metadata", {})
    if meta.get("deletionTimestamp") or "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return False
    if any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
        return False
    return pod.get("status", {}).get("phase") not in ("Succeeded", "Failed") and bool(
        pod.get("spec", {}).get("nodeName")
    )


def _index(tolerations: list[Obj], key: str) -> int | None:
    for i, t in enumerate(tolerations):
        if t.get("key") == key and t.get("effect") == "NoExecute":
            return i
    return None


def desired_patch(pod: Obj, autonomy: Autonomy | None) -> Obj | None:
    """The JSON merge patch that brings `pod` in line with its node's `autonomy`, or None if it is already.

    The patch carries the pod's resourceVersion, so a pod changed meanwhile fails with a conflict and is
    decided again from its new state rather than overwritten."""
    if not is_managed(pod):
        return None
    meta = pod.get("metadata", {})
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    tolerations: list[Obj] = copy.deepcopy(pod.get("spec", {}).get("tolerations") or [])
    new_annotations: dict[str, str | None] = {}
    changed = False
    for key, annotation in _KEYS.items():
        i = _index(tolerations, key)
        if i is None:
            continue
        current = tolerations[i].get("tolerationSeconds")
        if autonomy is not None:
            if annotation not in annotations:
                if current is None:
                    continue  # tolerates forever already: nothing to keep, nothing to change
                new_annotations[annotation] = str(current)
            target = autonomy.seconds
        else:
            if annotation not in annotations:
                continue
            new_annotations[annotation] = None
            original = annotations[annotation]
            target = int(original) if original.lstrip("-").isdigit() else None
        if current != target:
            if target is None:
                tolerations[i].pop("tolerationSeconds", None)
            else:
                tolerations[i]["tolerationSeconds"] = target
            changed = True
        changed = changed or bool(new_annotations)
    if not changed:
        return None
    patch: Obj = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": {"tolerations": tolerations}}
    if new_annotations:
        patch["metadata"]["annotations"] = new_annotations
    return patch
