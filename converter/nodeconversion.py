"""Conversion by label, as data: what yurt-manager should do next for one node. No I/O.

A node is an edge node when its label `openyurt.io/is-edge-worker` is "true", or, without that label, when
its label `apps.openyurt.io/nodepool` names a NodePool of type Edge (an explicit "false" wins over the pool).
An edge node is converted; a node that stops being one, and that yurt-manager converted or tried to (it
carries the condition `CONDITION`), is reverted. Any other node is never touched.

Converting or reverting a node is running the node Job `yurtctl convert` always ran (`plan.node_job`, the
command `yurt-node-entry convert|revert`): it installs or removes yurthub, checks kubelet comes back
Ready through it, and rolls the node back when it does not. What the Job runs (image, yurthub flags,
tunnel, bootstrap token) comes only from the ConfigMap `SETTINGS_CONFIGMAP` that `yurtctl convert` writes,
never from the node: the node supplies its name, which pins the Job to it.

The state lives in the cluster, so a restarted yurt-manager (or a new leader) goes on where the last one
stopped: the node condition `CONDITION` (reason `Converting`, `Converted`, `ConvertFailed`, `Reverting`,
`Reverted`, `RevertFailed`; status "True" only when converted), the Job itself while it exists (its action
is the command's first argument), and the annotation `RETRY_SEEN`, the value of the operator's annotation
`RETRY` when the last Job started. A failed node keeps its failed condition (and its Job, for diagnosis)
and is not tried again until its label asks for the other direction or an operator sets `RETRY` to a value
not seen yet: a broken node never flaps.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

from converter import components, helm, names, nodepool, nodestep

Obj = dict[str, Any]
Action = Literal["convert", "revert"]

CONDITION = "YurtEdgeConversion"
"""Node condition type telling where the node's conversion stands."""
RETRY = "yurt-edge.io/convert-retry"
"""Node annotation an operator sets to a new value to have a failed node tried again."""
RETRY_SEEN = "yurt-edge.io/convert-retry-seen"
"""Node annotation yurt-manager writes when it starts a node Job: the value of `RETRY` then."""
JOB_RETRY = RETRY
"""The same value, kept on the Job it started."""
SETTINGS_CONFIGMAP = components.CONVERSION_SETTINGS
"""ConfigMap (kube-system) with what the node Jobs run, written by `yurtctl convert`."""
SETTINGS_KEY = "settings"

CONVERTING, CONVERTED, CONVERT_FAILED = "Converting", "Converted", "ConvertFailed"
REVERTING, REVERTED, REVERT_FAILED = "Reverting", "Reverted", "RevertFailed"
RUNNING = {"convert": CONVERTING, "revert": REVERTING}
DONE = {"convert": CONVERTED, "revert": REVERTED}
FAILED = {"convert": CONVERT_FAILED, "revert": REVERT_FAILED}


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSettings:
    """What every node Job runs, as `yurtctl convert` was told (its `--image`, `--hub-args`, ...)."""

    image: str
    hub_args: str = ""
    node_timeout_s: float = 600.0
    """How long one node's Job may take; a Job older than that is stopped and counted failed."""
    tunnel_servers: tuple[str, ...] = ()
    tunnel_server_name: str = ""
    join_token: bool = False
    """The convert Jobs mount the bootstrap token's Secret (`components.JOIN_TOKEN_SECRET`)."""
    parallel: int = 5
    """Node Jobs running at once (yurt-manager's own `--max-parallel-conversions` caps it)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "parallel": self.parallel,
                "image": self.image,
                "hubArgs": self.hub_args,
                "nodeTimeoutSeconds": self.node_timeout_s,
                "tunnelServers": list(self.tunnel_servers),
                "tunnelServerName": self.tunnel_server_name,
                "joinToken": self.join_token,
            },
            sort_keys=True,
        )


class BadSettings(ValueError):
    """The settings ConfigMap cannot be read: no node Job runs until it is fixed."""


def parse_settings(configmap: Obj | None) -> JobSettings | None:
    """The settings in `configmap` (None: no ConfigMap, so no conversion was set up; nothing is done)."""
    if configmap is None:
        return None
    text = (configmap.get("data") or {}).get(SETTINGS_KEY)
    try:
        doc = json.loads(text or "")
        image = doc["image"]
        hub_args = doc.get("hubArgs", "")
        timeout = float(doc.get("nodeTimeoutSeconds", 600))
        servers = tuple(doc.get("tunnelServers") or ())
        server_name = doc.get("tunnelServerName", "")
        join = doc.get("joinToken", False)
        parallel = int(doc.get("parallel", 5))
    except (ValueError, TypeError, KeyError) as exc:
        raise BadSettings(f"key {SETTINGS_KEY!r} is not the JSON `yurtctl convert` writes: {exc}") from exc
    strings = [image, hub_args, server_name, *servers]
    if not all(isinstance(s, str) for s in strings) or not isinstance(join, bool) or not image or timeout <= 0:
        raise BadSettings(f"key {SETTINGS_KEY!r} has a value of the wrong type, or no image")
    return JobSettings(
        image=image,
        hub_args=hub_args,
        node_timeout_s=timeout,
        tunnel_servers=servers,
        tunnel_server_name=server_name,
        join_token=join,
        parallel=max(1, parallel),
    )


def node_args(settings: JobSettings, action: Action) -> list[str]:
    """The flags of `yurtctl node <action>` in every node Job."""
    args = [f"--timeout={settings.node_timeout_s / 2:.0f}"]
    if settings.hub_args:
        args.append(f"--hub-args={settings.hub_args}")
    if settings.join_token and action == "convert":
        args.append(f"--join-token-file={nodestep.STAGED_TOKEN}")  # a path: the token comes from the Secret
    if settings.tunnel_servers and action == "convert":
        args.append(f"--tunnel-server-addr={','.join(settings.tunnel_servers)}")
        args.append(f"--tunnel-server-name={settings.tunnel_server_name}")
    return args


def node_job(action: str, node: str, image: str, args: list[str], *, tunnel: bool, join_token: bool) -> Obj:
    """One node's Job: a convert Job mounts the tunnel CA's ConfigMap and the bootstrap token's Secret when
    the conversion has them; the token itself is never in the Job (only `--join-token-file=<path>` is)."""
    convert = action == "convert"
    return components.node_job(
        action,
        node,
        image,
        args,
        tunnel_ca=helm.CA_CONFIGMAP if tunnel and convert else None,
        join_token_secret=components.JOIN_TOKEN_SECRET if join_token and convert else None,
    )


def job_for(settings: JobSettings, action: Action, node: str, retry: str) -> Obj:
    """The Job yurt-manager creates for `node`: only `settings` and the node's name shape it; `retry` (the
    node's `RETRY` annotation) is kept on it as an annotation, nothing else."""
    job = node_job(
        action,
        node,
        settings.image,
        node_args(settings, action),
        tunnel=bool(settings.tunnel_servers),
        join_token=settings.join_token,
    )
    job["metadata"]["annotations"] = {JOB_RETRY: retry}
    return job


def settings_configmap(settings: JobSettings) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": SETTINGS_CONFIGMAP,
            "namespace": components.NAMESPACE,
            "labels": dict(components.MANAGED_BY),
        },
        "data": {SETTINGS_KEY: settings.to_json()},
    }


def _labels(node: Obj) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _annotations(node: Obj) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("annotations") or {}


def condition(node: Obj) -> Obj | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION:
            return dict(c)
    return None


def reason_of(node: Obj) -> str:
    """The reason of the node's conversion condition ("" without one)."""
    c = condition(node)
    return str(c.get("reason") or "") if c else ""


def pool_types(pools: list[Obj]) -> dict[str, str]:
    """NodePool name to its type (`Edge` when unset, the default OpenYurt's webhook gives)."""
    return {str(p["metadata"]["name"]): str((p.get("spec") or {}).get("type") or "Edge") for p in pools}


def is_edge(node: Obj, pool_types: Mapping[str, str]) -> bool:
    """`pool_types`: NodePool name to its `spec.type`."""
    label = _labels(node).get(names.EDGE_WORKER_LABEL)
    if label is not None:
        return label == "true"
    pool = _labels(node).get(nodepool.POOL_LABEL, "")
    return bool(pool) and pool_types.get(pool, "") == "Edge"


def wanted(node: Obj, pool_types: Mapping[str, str]) -> Action | None:
    """Convert an edge node; revert a node that is not one any more and was converted (or tried to be)."""
    if is_edge(node, pool_types):
        return "convert"
    reason = reason_of(node)
    if reason and reason != REVERTED:
        return "revert"
    return None


@dataclasses.dataclass(frozen=True)
class JobState:
    """One node Job, as read from the cluster."""

    action: Action
    phase: Literal["running", "succeeded", "failed"]
    retry: str = ""
    """The node's `RETRY` value when the Job started."""
    age_s: float = 0.0


def job_state(job: Obj, now: float, created: float | None) -> JobState | None:
    """`created`: the Job's creationTimestamp as a Unix time (None: unknown, age 0). None: not a node Job."""
    containers = ((((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    command = containers[0].get("command") or []
    action = command[1] if len(command) > 1 else ""
    if action not in ("convert", "revert"):
        return None
    status = job.get("status") or {}
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if status.get("succeeded") or conds.get("Complete") == "True":
        phase: Literal["running", "succeeded", "failed"] = "succeeded"
    elif status.get("failed") or conds.get("Failed") == "True":
        phase = "failed"
    else:
        phase = "running"
    retry = str(((job.get("metadata") or {}).get("annotations") or {}).get(JOB_RETRY, ""))
    age = max(0.0, now - created) if created is not None else 0.0
    return JobState("convert" if action == "convert" else "revert", phase, retry, age)


Kind = Literal["none", "wait", "start", "succeeded", "failed", "timed-out", "remove-job"]


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: Kind
    """none: nothing to do; wait: its Job runs; start: create the Job for `action` (and say so first);
    succeeded / failed: record the Job's outcome; timed-out: stop the Job and record a failure;
    remove-job: delete a failed Job whose failure was recorded, so the next pass starts anew."""
    action: Action | None = None


NONE = Decision("none")


def decide(node: Obj, pool_types: Mapping[str, str], job: JobState | None, timeout_s: float) -> Decision:
    """The next step for `node` with its Job `job` (None: none exists)."""
    want = wanted(node, pool_types)
    reason = reason_of(node)
    retry = str(_annotations(node).get(RETRY, ""))
    if job is not None:
        if job.phase == "running":
            return Decision("timed-out", job.action) if job.age_s > timeout_s else Decision("wait", job.action)
        if job.phase == "succeeded":
            return Decision("succeeded", job.action)
        if reason != FAILED[job.action]:
            return Decision("failed", job.action)
        if want != job.action or retry != job.retry:
            return Decision("remove-job", job.action)
        return NONE
    if want is None or reason == DONE[want]:
        return NONE
    if reason == FAILED[want] and retry == str(_annotations(node).get(RETRY_SEEN, "")):
        return NONE
    return Decision("start", want)


def new_condition(action: Action, outcome: Literal["running", "done", "failed"], message: str, now: str) -> Obj:
    reason = {"running": RUNNING, "done": DONE, "failed": FAILED}[outcome][action]
    return {
        "type": CONDITION,
        "status": "True" if reason == CONVERTED else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }


def with_condition(node: Obj, cond: Obj) -> list[Obj] | None:
    """The node's conditions with `cond` in place of its old conversion condition; None when that already
    says the same (reason and message). The transition time stays when the status does not change."""
    old = condition(node)
    if old is not None and (old.get("reason"), old.get("message")) == (cond["reason"], cond["message"]):
        return None
    if old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
        cond = {**cond, "lastTransitionTime": old["lastTransitionTime"]}
    others = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") != CONDITION]
    return [*others, cond]


def without_condition(node: Obj) -> list[Obj] | None:
    """The node's conditions without the conversion condition; None when it has none."""
    conds = (node.get("status") or {}).get("conditions") or []
    kept = [c for c in conds if c.get("type") != CONDITION]
    return kept if len(kept) != len(conds) else None


def message(action: Action, outcome: Literal["running", "done", "failed"], job: str, why: str = "") -> str:
    if outcome == "running":
        return f"node Job {job} is running `yurtctl node {action}` on this node"
    if outcome == "done":
        return (
            "yurthub in kubelet's path: kubelet Ready through yurthub"
            if action == "convert"
            else "yurthub removed, kubelet talks to the apiserver as before"
        )
    return (
        f"node Job {job} failed: {why}. Not tried again until the node's edge label changes or an "
        f"operator sets the annotation {RETRY} to a new value (`yurtctl convert` does for failed nodes)"
    )


def node_rows(nodes: list[Obj], pool_types: Mapping[str, str]) -> list[list[str]]:
    """`yurtctl get nodes`: per node its edge label, pool, whether it is an edge node, and where its
    conversion stands (reason and message of `CONDITION`, "-" without one)."""
    rows = []
    for n in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
        c = condition(n) or {}
        rows.append(
            [
                str(n["metadata"]["name"]),
                _labels(n).get(names.EDGE_WORKER_LABEL, "-"),
                _labels(n).get(nodepool.POOL_LABEL, "-"),
                "yes" if is_edge(n, pool_types) else "no",
                str(c.get("reason") or "-"),
                str(c.get("message") or ""),
            ]
        )
    return rows
