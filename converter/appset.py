"""YurtAppSet (apps.openyurt.io/v1beta1): one Deployment per selected NodePool, as a pure core without I/O.

yurt-manager (`converter.controller`) reads YurtAppSets, NodePools and the Deployments that carry the label
`REF_LABEL`, and asks this module what should be: `plan` gives the creates, updates and deletes, `status`
the object's new status. The Deployment for a pool is shaped as OpenYurt shapes it (`desired`):
generateName `<yas>-<pool>-`, labels pool-name / controller-revision-hash / ref-yurtappset, annotation
ref-nodepool, selector and pod labels gaining the pool name, `nodeSelector apps.openyurt.io/nodepool=<pool>`
and a controller ownerReference to the YurtAppSet.

Tweaks apply in list order: replicas, then container images (containers and initContainers), then all
matching JSON patches as one RFC 6902 patch over the whole Deployment, `{{nodepool-name}}` in a value replaced
by the pool's name. Unlike OpenYurt, a patch may not change the Deployment's namespace, owner, name or the
labels yurt-manager finds it by (`PatchError`, reported in the conditions): a YurtAppSet only ever yields
Deployments in its own namespace, owned by it. The patch applier is ours (`json_patch`, add/remove/replace
only, which is all OpenYurt's schema allows): a dozen lines do not justify a new dependency.

Revisions differ from OpenYurt on purpose. OpenYurt stamps every workload with one hash of `spec.workload`,
so any tweak rolls every pool. Here each pool's revision (`pool_revision`) is a hash of that pool's rendered
Deployment (template plus the tweaks that match it), so a template change rolls every pool and a tweak
changes only the pools it matches. No ControllerRevisions are kept: nothing here rolls back to one, and a
label is enough to tell a current Deployment from a stale one. `status.currentRevision` is a hash of
`spec.workload` (the YurtAppSet's own revision, for a person to compare).

Only `deploymentTemplate` is supported: a `statefulSetTemplate` is refused with condition `AppDispatched`
False, reason `UnsupportedWorkload`, and nothing is created.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any, Literal

from converter import events

Obj = dict[str, Any]

GROUP = "apps.openyurt.io"
YURTAPPSETS = "/apis/apps.openyurt.io/v1beta1/yurtappsets"
NODEPOOLS = "/apis/apps.openyurt.io/v1beta2/nodepools"
DEPLOYMENTS = "/apis/apps/v1/deployments"
NODEPOOL_LABEL = "apps.openyurt.io/nodepool"
"""Node label naming the node's pool (membership)."""
POOL_NAME_LABEL = "apps.openyurt.io/pool-name"
REVISION_LABEL = "apps.openyurt.io/controller-revision-hash"
REF_LABEL = "apps.openyurt.io/ref-yurtappset"
REF_POOL_ANNOTATION = "apps.openyurt.io/ref-nodepool"
POOL_PLACEHOLDER = "{{nodepool-name}}"


class PatchError(ValueError):
    """A tweak's JSON patch does not apply to the rendered Deployment (a path that is not there)."""


# --- selection ---------------------------------------------------------------------------------------------


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector over `labels`: None matches nothing, `{}` matches everything (as in
    Kubernetes' LabelSelectorAsSelector)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _matches(names: list[str] | None, selector: Obj | None, pool: Obj) -> bool:
    return _name(pool) in (names or []) or selector_matches(selector, _labels(pool))


def selected_pools(yas: Obj, pools: list[Obj]) -> list[Obj]:
    """The NodePools the YurtAppSet goes to, sorted by name: named in `spec.pools` or matching
    `spec.nodepoolSelector`; a named pool that does not exist is skipped."""
    spec = yas.get("spec") or {}
    chosen = [p for p in pools if _matches(spec.get("pools"), spec.get("nodepoolSelector"), p)]
    return sorted(chosen, key=_name)


def tweaks_for(yas: Obj, pool: Obj) -> list[Obj]:
    """The `tweaks` of every workloadTweak that matches `pool`, in list order."""
    listed = ((yas.get("spec") or {}).get("workload") or {}).get("workloadTweaks") or []
    return [t.get("tweaks") or {} for t in listed if _matches(t.get("pools"), t.get("nodepoolSelector"), pool)]


# --- RFC 6902 ------------------------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} does not start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if adding and token == "-":  # noqa: S105 - a JSON pointer token, not a password
        return len(container)
    if not token.isdigit():
        raise PatchError(f"{token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not adding):
        raise PatchError(f"array index {i} is out of range")
    return i


def json_patch(doc: Any, operations: list[Obj]) -> Any:
    """Apply RFC 6902 `add`, `remove` and `replace` operations to a copy of `doc`; raise `PatchError` when a
    path is missing (an `add` needs its parent, `remove`/`replace` the target itself)."""
    doc = copy.deepcopy(doc)
    for op in operations:
        kind, tokens = op.get("operation") or op.get("op"), _pointer(str(op.get("path", "")))
        if kind not in ("add", "remove", "replace"):
            raise PatchError(f"operation {kind!r} is not one of add, remove, replace")
        if not tokens:
            if kind == "remove":
                raise PatchError("cannot remove the whole document")
            doc = copy.deepcopy(op.get("value"))
            continue
        parent = doc
        for token in tokens[:-1]:
            if isinstance(parent, dict) and token in parent:
                parent = parent[token]
            elif isinstance(parent, list):
                parent = parent[_index(parent, token, adding=False)]
            else:
                raise PatchError(f"path {op.get('path')!r}: {token!r} not found")
        last = tokens[-1]
        if isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise PatchError(f"path {op.get('path')!r} not found")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        elif isinstance(parent, list):
            i = _index(parent, last, adding=kind == "add")
            if kind == "add":
                parent.insert(i, copy.deepcopy(op.get("value")))
            elif kind == "remove":
                del parent[i]
            else:
                parent[i] = copy.deepcopy(op.get("value"))
        else:
            raise PatchError(f"path {op.get('path')!r}: parent is not an object or array")
    return doc


def _substitute(value: Any, pool: str) -> Any:
    if isinstance(value, str):
        return value.replace(POOL_PLACEHOLDER, pool)
    if isinstance(value, list):
        return [_substitute(v, pool) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, pool) for k, v in value.items()}
    return value


# --- rendering -----------------------------------------------------------------------------------------------


def template_problem(yas: Obj) -> tuple[str, str] | None:
    """Why the YurtAppSet's template cannot be dispatched, as (reason, message), or None if it can."""
    template = ((yas.get("spec") or {}).get("workload") or {}).get("workloadTemplate") or {}
    if "statefulSetTemplate" in template and template["statefulSetTemplate"] is not None:
        return (
            "UnsupportedWorkload",
            "statefulSetTemplate is not supported by yurt-edge's yurt-manager: use deploymentTemplate",
        )
    if not isinstance(template.get("deploymentTemplate"), dict):
        return "InvalidTemplate", "spec.workload.workloadTemplate.deploymentTemplate is missing"
    return None


def _owner(yas: Obj) -> Obj:
    meta = yas["metadata"]
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "YurtAppSet",
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def generate_name(yas_name: str, pool: str) -> str:
    """`<yas>-<pool>-`, or `<yas>-` when that is too long for a name (the apiserver adds five characters)."""
    name = f"{yas_name}-{pool}-"
    return name if len(name) <= 253 - 5 else f"{yas_name}-"


def render(yas: Obj, pool: Obj) -> Obj:
    """The Deployment for `pool` without its revision label: template, pool pinning, then tweaks. Raises
    `PatchError` when a tweak's patch does not apply."""
    template = copy.deepcopy(yas["spec"]["workload"]["workloadTemplate"]["deploymentTemplate"])
    yas_name, pool_name = _name(yas), _name(pool)
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    labels = {**(meta.get("labels") or {}), POOL_NAME_LABEL: pool_name, REF_LABEL: yas_name}
    annotations = {**(meta.get("annotations") or {}), REF_POOL_ANNOTATION: pool_name}
    selector = spec.setdefault("selector", {})
    selector["matchLabels"] = {**(selector.get("matchLabels") or {}), POOL_NAME_LABEL: pool_name}
    pod = spec.setdefault("template", {})
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), POOL_NAME_LABEL: pool_name}
    pod_spec = pod.setdefault("spec", {})
    pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), NODEPOOL_LABEL: pool_name}
    deployment: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "generateName": generate_name(yas_name, pool_name),
            "namespace": yas["metadata"].get("namespace", "default"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [_owner(yas)],
        },
        "spec": spec,
    }
    tweaks = tweaks_for(yas, pool)
    for tweak in tweaks:
        if tweak.get("replicas") is not None:
            deployment["spec"]["replicas"] = int(tweak["replicas"])
        images = {i.get("name"): i.get("targetImage") for i in tweak.get("containerImages") or []}
        for kind in ("containers", "initContainers"):
            for container in deployment["spec"]["template"]["spec"].get(kind) or []:
                if container.get("name") in images:
                    container["image"] = images[container["name"]]
    patches = [{**p, "value": _substitute(p.get("value"), pool_name)} for t in tweaks for p in t.get("patches") or []]
    if patches:
        fixed = _fixed(deployment)
        deployment = json_patch(deployment, patches)
        if _fixed(deployment) != fixed:
            raise PatchError(
                "a patch may not change the workload's kind, namespace, ownerReferences, or its "
                f"{POOL_NAME_LABEL} / {REF_LABEL} labels and selector"
            )
    return deployment


def _fixed(deployment: Any) -> Any:
    """What a tweak's patch must leave alone: where the Deployment lives, who owns it and how yurt-manager
    finds it again (a patch that dropped the ownerReference would have a new Deployment made every pass)."""
    if not isinstance(deployment, dict):
        return None
    meta = deployment.get("metadata") or {}
    labels = meta.get("labels") or {}
    spec = deployment.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return (
        deployment.get("apiVersion"),
        deployment.get("kind"),
        meta.get("namespace"),
        meta.get("name"),
        meta.get("generateName"),
        meta.get("ownerReferences"),
        labels.get(POOL_NAME_LABEL),
        labels.get(REF_LABEL),
        selector.get(POOL_NAME_LABEL),
    )


def pool_revision(rendered: Obj) -> str:
    """The pool's revision: a hash of its rendered Deployment (so only what changes that pool's Deployment
    changes it)."""
    text = json.dumps({"metadata": rendered.get("metadata"), "spec": rendered.get("spec")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def workload_revision(yas: Obj) -> str:
    """The YurtAppSet's revision: a hash of `spec.workload` (`status.currentRevision`)."""
    text = json.dumps((yas.get("spec") or {}).get("workload"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def desired(yas: Obj, pool: Obj) -> Obj:
    """The Deployment yurt-manager creates (or updates to) for `pool`, revision labels included."""
    deployment = render(yas, pool)
    revision = pool_revision(deployment)
    deployment["metadata"].setdefault("labels", {})[REVISION_LABEL] = revision
    template_meta = deployment["spec"].setdefault("template", {}).setdefault("metadata", {})
    template_meta.setdefault("labels", {})[REVISION_LABEL] = revision
    return deployment


# --- plan ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Action:
    verb: Literal["create", "update", "delete"]
    pool: str
    body: Obj | None
    """create: the Deployment; update: the existing Deployment with the desired labels, annotations and
    spec (its resourceVersion kept, so a concurrent change is a conflict); delete: None."""
    name: str = ""
    """The existing Deployment's name (update, delete)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: list[Action]
    pools: list[str]
    """The selected pools, sorted."""
    errors: dict[str, str]
    """Pool → why its Deployment could not be rendered (a tweak's patch that does not apply)."""
    problem: tuple[str, str] | None
    """(reason, message) when the template itself cannot be dispatched; then nothing is created."""


def owned(yas: Obj, deployments: list[Obj]) -> list[Obj]:
    """The Deployments this YurtAppSet controls: in its namespace, labelled with its name, and with a
    controller ownerReference to its uid (a Deployment that only carries the label is left alone)."""
    meta = yas["metadata"]
    out = []
    for d in deployments:
        dmeta = d.get("metadata") or {}
        if dmeta.get("namespace") != meta.get("namespace") or _labels(d).get(REF_LABEL) != meta["name"]:
            continue
        refs = dmeta.get("ownerReferences") or []
        if any(r.get("controller") and r.get("uid") == meta.get("uid") for r in refs):
            out.append(d)
    return sorted(out, key=lambda d: (str(d["metadata"].get("creationTimestamp", "")), _name(d)))


def plan(yas: Obj, pools: list[Obj], deployments: list[Obj]) -> Plan:
    """What to write so that each selected pool has exactly one current Deployment and no other pool has
    one. `deployments`: any Deployments (those not `owned` are ignored). A pool with two Deployments keeps
    the oldest."""
    mine = owned(yas, deployments)
    selected = selected_pools(yas, pools)
    problem = template_problem(yas)
    names = [_name(p) for p in selected]
    if problem is not None:  # a template we cannot render: leave what runs alone rather than delete it
        return Plan([], names, {}, problem)
    actions: list[Action] = []
    by_pool: dict[str, Obj] = {}
    for d in mine:
        label = _labels(d).get(POOL_NAME_LABEL, "")
        if label in names and label not in by_pool:
            by_pool[label] = d
        else:
            actions.append(Action("delete", label, None, _name(d)))
    failures: dict[str, str] = {}
    for pool in selected:
        try:
            want = desired(yas, pool)
        except (PatchError, KeyError, TypeError, AttributeError) as exc:
            failures[_name(pool)] = f"{type(exc).__name__}: {exc}"
            continue
        have = by_pool.get(_name(pool))
        if have is None:
            actions.append(Action("create", _name(pool), want))
        elif _labels(have).get(REVISION_LABEL) != want["metadata"]["labels"][REVISION_LABEL]:
            body = copy.deepcopy(have)
            body["metadata"]["labels"] = want["metadata"]["labels"]
            body["metadata"]["annotations"] = {
                **(have["metadata"].get("annotations") or {}),
                **want["metadata"]["annotations"],
            }
            body["spec"] = want["spec"]
            body.pop("status", None)
            actions.append(Action("update", _name(pool), body, _name(have)))
    return Plan(actions, names, failures, problem)


# --- status --------------------------------------------------------------------------------------------------


def _replicas(d: Obj) -> int:
    value = (d.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def workload_ready(d: Obj) -> bool:
    """Ready (OpenYurt's rule): it wants replicas and all of them are ready."""
    replicas = _replicas(d)
    return replicas > 0 and int((d.get("status") or {}).get("readyReplicas") or 0) == replicas


def workload_updated(d: Obj, revision: str) -> bool:
    """Updated: it carries the pool's current revision, its controller has seen that spec, and every
    replica runs it."""
    st = d.get("status") or {}
    seen = int(st.get("observedGeneration") or 0) >= int((d.get("metadata") or {}).get("generation") or 0)
    current = _labels(d).get(REVISION_LABEL) == revision
    return current and seen and int(st.get("updatedReplicas") or 0) == _replicas(d)


def _condition(kind: str, ok: bool, reason: str, message: str) -> Obj:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message}


def status(yas: Obj, pools: list[Obj], deployments: list[Obj], result: Plan, failed: dict[str, str], now: str) -> Obj:
    """The YurtAppSet's status after a pass. `deployments`: what exists after the pass's writes (any;
    only `owned` ones count); `failed`: verb → message of a write that failed this pass; `now`: RFC 3339,
    stamped on a condition whose status changed (an unchanged condition keeps its old time)."""
    revisions: dict[str, str] = {}
    for pool in selected_pools(yas, pools):
        try:
            revisions[_name(pool)] = pool_revision(render(yas, pool))
        except (PatchError, KeyError, TypeError, AttributeError):
            continue
    per_pool = []
    counted: set[str] = set()
    ready = updated = 0
    for d in owned(yas, deployments):
        label = _labels(d).get(POOL_NAME_LABEL, "")
        if label not in result.pools or label in counted:
            continue  # a workload about to be deleted (unselected pool, or a younger duplicate)
        counted.add(label)
        is_ready, is_updated = workload_ready(d), workload_updated(d, revisions.get(label, ""))
        ready += is_ready
        updated += is_updated
        st = d.get("status") or {}
        per_pool.append(
            {
                "pool": label,
                "workload": _name(d),
                "replicas": _replicas(d),
                "readyReplicas": int(st.get("readyReplicas") or 0),
                "updatedReplicas": int(st.get("updatedReplicas") or 0),
                "ready": is_ready,
                "updated": is_updated,
            }
        )
    total = len(per_pool)
    conditions = [
        _condition("PoolFound", True, "FindPools", f"{len(result.pools)} pools selected")
        if result.pools
        else _condition("PoolFound", False, "NoFindPools", "no NodePool matches spec.pools or spec.nodepoolSelector")
    ]
    if result.problem is not None:
        conditions.append(_condition("AppDispatched", False, *result.problem))
    elif "create" in failed or result.errors:
        message = failed.get("create") or "; ".join(f"pool {p}: {m}" for p, m in sorted(result.errors.items()))
        conditions.append(_condition("AppDispatched", False, "CreateWorkloadError", message))
    else:
        conditions.append(_condition("AppDispatched", True, "AppDispatched", "every selected pool has its workload"))
    if "delete" in failed:
        conditions.append(_condition("AppDeleted", False, "DeleteWorkloadError", failed["delete"]))
    else:
        conditions.append(_condition("AppDeleted", True, "AppDeleted", "no workload left for an unselected pool"))
    if "update" in failed:
        conditions.append(_condition("AppUpdated", False, "UpdateWorkloadError", failed["update"]))
    else:
        conditions.append(_condition("AppUpdated", True, "AppUpdated", "every workload carries its pool's revision"))
    if total == 0:
        conditions.append(_condition("AppReady", False, "NoWorkloadFound", "no workload exists yet"))
    elif ready == total:
        conditions.append(_condition("AppReady", True, "AllWorkloadsReady", f"{ready}/{total} workloads ready"))
    else:
        conditions.append(_condition("AppReady", False, "NotAllWorkloadsReady", f"{ready}/{total} workloads ready"))
    old = {c.get("type"): c for c in (yas.get("status") or {}).get("conditions") or []}
    for c in conditions:
        before = old.get(c["type"])
        same = before is not None and before.get("status") == c["status"]
        c["lastTransitionTime"] = before.get("lastTransitionTime", now) if same and before else now
    previous = yas.get("status") or {}
    return {
        "observedGeneration": int(yas["metadata"].get("generation") or 0),
        "collisionCount": int(previous.get("collisionCount") or 0),
        "currentRevision": workload_revision(yas),
        "conditions": conditions,
        "readyWorkloads": ready,
        "updatedWorkloads": updated,
        "totalWorkloads": total,
        "poolStatus": per_pool,
    }


# --- events --------------------------------------------------------------------------------------------------

EVENT_REASONS = {"create": "WorkloadCreated", "update": "WorkloadUpdated", "delete": "WorkloadDeleted"}
"""Normal Event reason for each write of a pool's Deployment."""
FAILED_REASONS = {"create": "CreateWorkloadError", "update": "UpdateWorkloadError", "delete": "DeleteWorkloadError"}
"""Warning Event reason for each write that was refused (the same reasons as the conditions)."""
RENDER_REASON = "RenderWorkloadError"
"""Warning Event reason for a pool whose Deployment could not be rendered (a tweak's patch that does not apply)."""


def warnings(result: Plan, failed: dict[str, str]) -> list[tuple[str, str]]:
    """(reason, message) of every Warning Event a pass has to tell: the template problem, each pool that could
    not be rendered, each refused write."""
    out = [] if result.problem is None else [result.problem]
    out += [(RENDER_REASON, f"pool {pool}: {message}") for pool, message in sorted(result.errors.items())]
    out += [(FAILED_REASONS[verb], message) for verb, message in sorted(failed.items())]
    return out


def event(yas: Obj, kind: Literal["Normal", "Warning"], reason: str, message: str, now: str) -> Obj:
    """A core/v1 Event about the YurtAppSet (`kubectl describe yurtappset` lists it), from yurt-manager."""
    meta = yas["metadata"]
    namespace = meta.get("namespace", "default")
    involved = {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "YurtAppSet",
        "name": meta["name"],
        "namespace": namespace,
        "uid": meta.get("uid", ""),
    }
    return events.about(involved, namespace, reason, message, kind, now)
