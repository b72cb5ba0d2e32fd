"""Everything the harness can see of a cluster, for before/after comparisons: every API object of every
listable resource (minus what only says time has passed), and every file of the real node that differs
from its base image (the node root's overlay upper layer and its state directory), by content hash.

Left out, because they change by themselves while a cluster runs: Events; resourceVersion and other
bookkeeping (managedFields, generation and observedGeneration, timestamps), node heartbeats and pods' status
(kubelet's report of its containers: a reboot restarts them); kubelet's own runtime state on the node
(containerd's store, pod directories, logs, the journal) and systemd's per-boot private directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testenv.kubectl import Kubectl

if TYPE_CHECKING:
    from testenv.cluster import Cluster
    from testenv.node import Node

_SKIP_RESOURCES = {"events", "events.events.k8s.io", "componentstatuses", "bindings", "tokenreviews"}
_DROP_META = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "selfLink")
_TIME_KEYS = {
    "observedGeneration",
    "lastHeartbeatTime",
    "lastTransitionTime",
    "lastProbeTime",
    "renewTime",
    "acquireTime",
    "time",
    "lastUpdateTime",
    "startedAt",
    "timeAdded",
}
_VOLATILE_PATHS = (
    "var/lib/containerd",
    "var/lib/kubelet/pods",
    "var/lib/kubelet/plugins",
    "var/lib/kubelet/plugins_registry",
    "var/lib/kubelet/pod-resources",
    "var/lib/kubelet/device-plugins",
    "var/lib/kubelet/cpu_manager_state",
    "var/lib/kubelet/memory_manager_state",
    "var/lib/kubelet/checkpoints",
    "var/lib/kubelet/allocated_pods_state",  # kubelet's checkpoints of the pods it runs (they come and go)
    "var/lib/kubelet/actuated_pods_state",
    "var/lib/kubelet/pki",
    "var/log",
    "var/lib/systemd",
    "var/cache",
    "var/lib/cni",
    "run",
    "tmp",
    "root",
    "etc/machine-id",
    "var/lib/dbus",
    "var/tmp/systemd-private-",  # systemd's PrivateTmp directories, named anew at every boot
)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in _TIME_KEYS}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def api_objects(kubectl: Kubectl) -> dict[str, Any]:
    names = kubectl.run("api-resources", "--verbs=list", "-o", "name").split()
    out: dict[str, Any] = {}
    for resource in sorted(set(names) - _SKIP_RESOURCES):
        listed = json.loads(kubectl.run("get", resource, "--all-namespaces", "-o", "json"))
        for obj in listed.get("items", []):
            meta = obj.get("metadata", {})
            for key in _DROP_META:
                meta.pop(key, None)
            if obj.get("kind") == "Node":
                obj.get("status", {}).pop("conditions", None)
                obj.get("status", {}).pop("images", None)
            if obj.get("kind") == "Pod":
                obj.pop("status", None)  # kubelet's report of the containers (a reboot restarts them), not config
            out[f"{resource}/{meta.get('namespace', '')}/{meta.get('name', '')}"] = _scrub(obj)
    return out


def node_files(lower: Path, *roots: Path) -> dict[str, str]:
    """Files of the node's `roots` (its overlay upper layer, its state directory). A directory the overlay
    copied up only because something was written beneath it is not a difference when `lower` (the base
    root) has it too."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            dirnames[:] = [d for d in dirnames if not os.path.join(rel_dir, d).startswith(_VOLATILE_PATHS)]
            for name in dirnames + filenames:
                rel = os.path.join(rel_dir, name)
                if rel.startswith(_VOLATILE_PATHS) or "__pycache__" in rel:
                    continue
                path = Path(dirpath) / name
                st = path.lstat()
                if stat.S_ISREG(st.st_mode):
                    kind = "file " + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
                elif stat.S_ISLNK(st.st_mode):
                    kind = "link " + os.readlink(path)
                elif stat.S_ISDIR(st.st_mode):
                    if (lower / rel).is_dir():
                        continue
                    kind = "dir"
                else:
                    kind = f"special {st.st_mode:o}"  # an overlay whiteout: a deleted base file
                out[f"{root.name}/{rel}"] = f"{kind} {stat.S_IMODE(st.st_mode):o}"
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = [f"only before: {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"only after: {k}" for k in sorted(after.keys() - before.keys())]
    for key in sorted(before.keys() & after.keys()):
        if before[key] != after[key]:
            for where, was, now in _changes(before[key], after[key], ""):
                was_s, now_s = (json.dumps(v, sort_keys=True)[:300] for v in (was, now))
                lines.append(f"changed: {key}{where}: {was_s} -> {now_s}")
    return lines


def _changes(was: Any, now: Any, where: str) -> list[tuple[str, Any, Any]]:
    """Where two values differ, as paths (`.spec.tolerations[2]`), so a diff names the field, not a prefix."""
    if isinstance(was, dict) and isinstance(now, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(was.keys() | now.keys()):
            if was.get(k) != now.get(k):
                out += _changes(was.get(k), now.get(k), f"{where}.{k}")
        return out
    if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
        return [
            c for i, (a, b) in enumerate(zip(was, now, strict=True)) if a != b for c in _changes(a, b, f"{where}[{i}]")
        ]
    return [(where, was, now)]


Snapshot = tuple[dict[str, Any], dict[str, str]]
"""A cluster's API objects and its real node's files (`api_objects`, `node_files`)."""


def of_node(node: Node) -> dict[str, str]:
    """The real node's files (`node_files` of its overlay upper layer and its state directory)."""
    return node_files(node.rootfs, node.directory / "upper", node.directory / "state")


def of_cluster(kube: Cluster) -> Snapshot:
    return api_objects(kube.kubectl), of_node(kube.node)


def since(kube: Cluster, before: Snapshot) -> list[str]:
    """What differs between `before` and the cluster now (empty when nothing does)."""
    after = of_cluster(kube)
    return diff(before[0], after[0]) + diff(before[1], after[1])
