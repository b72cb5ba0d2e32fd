"""`yurtctl convert` / `yurtctl revert`: gather the cluster's state, check it, print or apply the plan.

Order of a convert: preflight → lock → record, the node Jobs' settings (`nodeconversion.SETTINGS_CONFIGMAP`),
cloud nodes' labels, cloud components (yurt-manager among them), the tunnel chart → the edge nodes' labels,
each with a new value of the annotation `nodeconversion.RETRY` (this run's identity) → yurt-manager runs one
node Job per edge node, a few at a time (conversion by label, `converter.conversionsync`), and the run
follows each node's condition, one line per node, until every node is converted or failed → record marked
converted when every node is. A failed node was rolled back by its Job, which yurt-manager keeps for
diagnosis; the run exits non-zero, and the next run asks yurt-manager to try it again. A node's outcome
counts for this run only once yurt-manager has started the Job this run asked for (`RETRY_SEEN`). Revert
labels the converted nodes `is-edge-worker=false` and follows yurt-manager reverting them the same way, then
removes the cloud components, restores labels, pods' tolerations and the rest, and waits until no Job pod
of ours is left.

The lock is the Lease `kube-system/yurtctl-lock`, renewed every third of `LOCK_SECONDS` while the run lasts
and deleted at its end; a run killed without cleanup holds it at most `LOCK_SECONDS`, after which the next
run takes it over. A run that loses the lock (another run took the Lease, or renewals failed for two thirds
of its duration) stops at once: every later call of the run to the apiserver raises `LockLost`, which says
why; the run leaves the conversion record and the Lease as they are, for the next run to go on from.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from converter import access, components, errors, helm, lease, nodeconversion, nodepool, plan, tolerations
from converter.progress import Progress

log = logging.getLogger(__name__)

NS = components.NAMESPACE
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
PODS = f"/api/v1/namespaces/{NS}/pods"
LOCK = "yurtctl-lock"
LOCK_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{LOCK}"
LOCK_SECONDS = 30


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    identity: str
    """This run's name in the lock."""
    poll_s: float = 1.0
    lock_wait_s: float = LOCK_SECONDS * 2
    """How long to wait for a lock held by another run."""
    lock_s: int = LOCK_SECONDS
    """The lock's lease duration."""


class LockLost(errors.ConverterError):
    """Another run took the lock, or it could not be renewed: this run must change nothing more."""


class Lock:
    """The run's lock, renewed in the background; `release` deletes it. `guard` wraps the run's Api so that
    no call goes out once the lock is lost."""

    def __init__(self, api: access.Api, identity: str, seconds: int = LOCK_SECONDS) -> None:
        self.api = api
        self.identity = identity
        self.seconds = seconds
        self.lost = ""
        """Why the lock was lost; empty while it is held."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try(self) -> bool:
        current = self.api.get(LOCK_PATH)
        want = lease.next_lease(current, self.identity, time.time(), self.seconds, LOCK, NS)
        if want is None:
            return False
        try:
            if current is None:
                self.api.create(LOCK_PATH.rsplit("/", 1)[0], want)
            else:
                self.api.replace(LOCK_PATH, want)
        except errors.Conflict:
            return False
        return True

    def check(self) -> None:
        if self.lost:
            raise LockLost(self.lost)

    def guard(self, api: access.Api) -> access.Api:
        return _Guarded(api, self)

    def acquire(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not self._try():
            if time.monotonic() >= deadline:
                holder = ((self.api.get(LOCK_PATH) or {}).get("spec") or {}).get("holderIdentity", "?")
                raise errors.LockHeld(f"another yurtctl run ({holder}) holds {NS}/{LOCK}; try again when it is done")
            time.sleep(1)
        self._thread = threading.Thread(target=self._renew, name="yurtctl-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.seconds / 3):
            sent = time.monotonic()
            try:
                if self._try():
                    renewed = sent
                    continue
                holder = ((self.api.get(LOCK_PATH) or {}).get("spec") or {}).get("holderIdentity")
            except errors.ConverterError as exc:
                log.warning("lock renewal failed error=%s", exc)
                if time.monotonic() - renewed < self.seconds * 2 / 3:
                    continue
                self._lose(f"the run could not renew its lock {NS}/{LOCK} for {self.seconds * 2 / 3:.0f}s: {exc}")
                return
            if holder == self.identity:
                continue  # a write raced ours (conflict): still ours, renewed on the next turn
            self._lose(f"another yurtctl run ({holder or 'nobody'}) took the lock {NS}/{LOCK}")
            return

    def _lose(self, problem: str) -> None:
        record = plan.RECORD_PATH.rsplit("/", 1)[-1]
        self.lost = (
            f"{problem}; this run stopped before its next change and kept the conversion record "
            f"(ConfigMap {NS}/{record}): run again when the other run is done"
        )
        log.warning("lock lost identity=%s why=%s", self.identity, problem)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.api.get(LOCK_PATH)
        if current is not None and (current.get("spec") or {}).get("holderIdentity") == self.identity:
            self.api.delete(LOCK_PATH)


class _Guarded:
    """An `access.Api` that refuses every call once `lock` is lost."""

    def __init__(self, api: access.Api, lock: Lock) -> None:
        self._api = api
        self._lock = lock

    def get(self, path: str) -> access.Obj | None:
        self._lock.check()
        return self._api.get(path)

    def list(self, path: str, *, labels: str = "", fields: str = "") -> list[access.Obj]:
        self._lock.check()
        return self._api.list(path, labels=labels, fields=fields)

    def create(self, path: str, body: access.Obj) -> access.Obj:
        self._lock.check()
        return self._api.create(path, body)

    def patch(self, path: str, body: access.Obj) -> access.Obj:
        self._lock.check()
        return self._api.patch(path, body)

    def replace(self, path: str, body: access.Obj) -> access.Obj:
        self._lock.check()
        return self._api.replace(path, body)

    def delete(self, path: str) -> bool:
        self._lock.check()
        return self._api.delete(path)

    def list_at(self, path: str) -> tuple[builtins.list[access.Obj], str]:
        self._lock.check()
        return self._api.list_at(path)

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[tuple[str, access.Obj]]:
        self._lock.check()
        return self._api.watch(path, resource_version, timeout_s)


def apply_change(api: access.Api, change: plan.Change) -> None:
    if change.path.startswith("/api/v1/nodes/") and change.path.endswith("/status"):
        _drop_condition(api, change.path)
    elif change.verb == "delete" or change.body is None:
        api.delete(change.path)
    elif change.verb == "apply":
        try:
            api.create(change.path, change.body)
        except errors.Conflict:
            api.patch(f"{change.path}/{change.body['metadata']['name']}", change.body)
    elif "/pods/" in change.path:
        _restore_pod(api, change.path)
    elif change.path.startswith("/api/v1/nodes/") and nodepool.PREVIOUS in _annotations(change.body):
        _strip_pool(api, change.path)
    else:
        api.patch(change.path, change.body)


def _annotations(body: access.Obj) -> dict[str, object]:
    return dict((body.get("metadata") or {}).get("annotations") or {})


def _strip_pool(api: access.Api, path: str) -> None:
    """Take a node's NodePool attributes off, deciding again from its current state (its taints are replaced
    as a whole list, so a change meanwhile is a Conflict, and is decided again)."""
    for _ in range(10):
        node = api.get(path)
        patch = nodepool.node_patch(node, {}) if node is not None else None
        if patch is None:
            return
        try:
            api.patch(path, patch)
            return
        except errors.NotFound:
            return
        except errors.Conflict:
            continue
    raise errors.ConverterError(f"{path}: kept changing while its NodePool attributes were being removed")


def _drop_condition(api: access.Api, path: str) -> None:
    """Take the conversion condition off a node's status, under its resourceVersion (kubelet writes the
    other conditions meanwhile: a Conflict is read and decided again)."""
    for _ in range(10):
        node = api.get(path.removesuffix("/status"))
        conditions = nodeconversion.without_condition(node) if node is not None else None
        if node is None or conditions is None:
            return
        body = {
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "status": {"conditions": conditions},
        }
        try:
            api.patch(path, body)
            return
        except errors.NotFound:
            return
        except errors.Conflict:
            continue
    raise errors.ConverterError(f"{path}: kept changing while its conversion condition was being removed")


def _restore_pod(api: access.Api, path: str) -> None:
    """Put a pod's original tolerations back, deciding again from its current state: pods change all the
    time (status), so a patch planned earlier may carry a stale resourceVersion."""
    for _ in range(10):
        pod = api.get(path)
        patch = tolerations.desired_patch(pod, None) if pod is not None else None
        if patch is None:
            return  # gone, or nothing left to restore
        try:
            api.patch(path, patch)
            return
        except errors.NotFound:
            return
        except errors.Conflict:
            continue
    raise errors.ConverterError(f"{path}: kept changing while its tolerations were being restored")


def remove_jobs(api: access.Api, nodes: list[str] | None, poll_s: float, timeout_s: float = 120.0) -> None:
    """Delete our Jobs (for `nodes`, or all) and wait until they and their pods are gone, so a leftover of
    an earlier run never blocks this one."""

    def ours(objects: list[access.Obj]) -> list[str]:
        return [
            o["metadata"]["name"]
            for o in objects
            if nodes is None or (o["metadata"].get("labels") or {}).get(components.JOB_LABEL) in nodes
        ]

    for name in ours(api.list(JOBS, labels=components.JOB_LABEL)):
        api.delete(f"{JOBS}/{name}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = ours(api.list(JOBS, labels=components.JOB_LABEL))
        pods = ours(api.list(PODS, labels=components.JOB_LABEL))
        if not jobs and not pods:
            return
        for name in pods:
            api.delete(f"{PODS}/{name}")  # orphans of a Job deleted without propagation
        time.sleep(poll_s)
    raise errors.ConverterError(f"earlier yurtctl Jobs or their pods did not go away within {timeout_s:.0f}s")


def failure(api: access.Api, job_name: str) -> str:
    """Why a node Job failed, for people: the last line its container left (its termination message, or the
    end of its log), else why its pod is waiting or never started."""
    for pod in api.list(PODS, labels=f"job-name={job_name}"):
        for status in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return str(terminated["message"]).strip().splitlines()[-1]
        waiting = [
            ((s.get("state") or {}).get("waiting") or {}) for s in pod.get("status", {}).get("containerStatuses") or []
        ]
        for w in waiting:
            if w.get("reason"):
                return f"{w['reason']}: {w.get('message', '')}".strip()
        phase = pod.get("status", {}).get("phase")
        if phase == "Pending":
            return "its pod never started (Pending)"
    return "no pod log to show"


def _record(api: access.Api, node: str, state: str) -> None:
    with contextlib.suppress(errors.NotFound):  # revert without a record
        api.patch(plan.RECORD_PATH, {"data": {f"node.{node}": state}})


def node_state(node: access.Obj | None, action: str, retry: str) -> tuple[str, str]:
    """Where yurt-manager stands with `node` for this run: ("done" | "failed" | "running" | "waiting", why).
    A failed or running condition counts only once yurt-manager has started the Job this run asked for
    (the node's `RETRY_SEEN` is this run's `retry`): until then it tells an earlier attempt."""
    if node is None:
        return "failed", "the Node is gone"
    act: nodeconversion.Action = "convert" if action == "convert" else "revert"
    cond = nodeconversion.condition(node) or {}
    reason = str(cond.get("reason") or "")
    ours = ((node["metadata"].get("annotations") or {}).get(nodeconversion.RETRY_SEEN)) == retry
    if reason == nodeconversion.DONE[act]:
        return "done", ""
    if reason == nodeconversion.FAILED[act] and ours:
        return "failed", str(cond.get("message") or reason)
    if reason == nodeconversion.RUNNING[act] and ours:
        return "running", ""
    return "waiting", ""


def watch_nodes(
    api: access.Api, p: plan.Plan, opts: plan.Options, settings: RunSettings, retry: str, out: TextIO
) -> dict[str, str]:
    """Follow yurt-manager through `p.nodes` (it runs their Jobs, a few at a time), one line per node and
    change; returns the failed nodes with their reasons. A node yurt-manager has not finished once every
    node could have had its turn is failed with a pointer at yurt-manager."""
    progress = Progress(p.skipped + p.nodes, out)
    for node in p.skipped:
        progress.set(node, f"{p.action}ed already")
    failed: dict[str, str] = {}
    pending = list(p.nodes)
    shown: dict[str, str] = {}
    rounds = -(-len(pending) // max(1, opts.parallel)) + 1
    total_s = opts.node_timeout_s * rounds + 60
    deadline = time.monotonic() + total_s
    while pending:
        for name in list(pending):
            state, why = node_state(api.get(f"/api/v1/nodes/{name}"), p.action, retry)
            if state == "done":
                _record(api, name, f"{p.action}ed")
                progress.set(name, f"{p.action}ed")
                pending.remove(name)
            elif state == "failed":
                failed[name] = why
                _record(api, name, "failed")
                progress.set(name, f"FAILED: {why}")
                pending.remove(name)
            elif shown.get(name) != state:
                progress.set(name, state)
            shown[name] = state
        if not pending:
            break
        if time.monotonic() >= deadline:
            for name in pending:
                why = (
                    f"yurt-manager did not {p.action} it within {total_s:.0f}s "
                    f"(is it running? kubectl -n {NS} get pods -l app={components.MANAGER})"
                )
                failed[name] = why
                progress.set(name, f"FAILED: {why}")
            break
        time.sleep(settings.poll_s)
    return failed


def node_args(opts: plan.Options, action: str = "convert") -> list[str]:
    return nodeconversion.node_args(opts.job_settings(), "convert" if action == "convert" else "revert")


def install_tunnel(api: access.Api, charts: helm.Helm, opts: plan.Options, out: TextIO) -> None:
    """Install or upgrade the chart, then check it left the CA the node Jobs hand to the agents."""
    charts.install(helm.values(opts.image, opts.tunnel_replicas))
    out.write(
        f"  helm   {helm.RELEASE} installed in {helm.NAMESPACE} (tunnel server, {opts.tunnel_replicas} replicas)\n"
    )
    ca = api.get(f"/api/v1/namespaces/{helm.NAMESPACE}/configmaps/{helm.CA_CONFIGMAP}")
    if not ((ca or {}).get("data") or {}).get("ca.crt"):
        raise errors.ConverterError(f"the tunnel chart left no CA in ConfigMap {helm.NAMESPACE}/{helm.CA_CONFIGMAP}")


def tunnel_installed(api: access.Api) -> bool:
    return bool(api.list(f"/api/v1/namespaces/{helm.NAMESPACE}/secrets", labels=helm.RELEASE_SECRETS))


def convert(
    api: access.Api,
    opts: plan.Options,
    settings: RunSettings,
    out: TextIO,
    *,
    dry_run: bool,
    charts: helm.Helm | None = None,
) -> int:
    """`charts`: how to run helm, needed with the tunnel."""
    if opts.tunnel and charts is None:
        raise errors.ConverterError("the tunnel needs helm")
    nodes = api.list("/api/v1/nodes")
    record = api.get(plan.RECORD_PATH)
    version = api.get("/version") or {}
    problems = plan.preflight(opts, nodes, version, record)
    problems += plan.foreign_crds([api.get(path) for path in plan.crd_paths()])
    if problems:
        out.write("yurtctl convert: preflight failed, nothing was changed:\n" + "".join(f"  - {p}\n" for p in problems))
        return 1
    retry = settings.identity
    p = plan.convert_plan(opts, nodes, record, policies=plan.minor_of(version) >= components.POLICY_MINOR, retry=retry)
    args = node_args(opts)
    if dry_run:
        objects = charts.render(helm.values(opts.image, opts.tunnel_replicas)) if charts and opts.tunnel else []
        out.write("\n".join(p.lines(opts.image, args, objects)) + "\n(dry run: nothing was changed)\n")
        return 0
    lock = Lock(api, settings.identity, settings.lock_s)
    lock.acquire(settings.lock_wait_s)
    api = lock.guard(api)
    try:
        for change in p.before:
            apply_change(api, change)
            out.write(f"  api    {change.what}\n")
        if charts is not None and opts.tunnel:
            install_tunnel(api, charts, opts, out)
        for change in p.labels:
            apply_change(api, change)
            out.write(f"  api    {change.what}\n")
        failed = watch_nodes(api, p, opts, settings, retry, out)
        if failed:
            out.write(f"yurtctl convert: {len(failed)} of {len(p.nodes)} nodes failed and were rolled back:\n")
            out.write("".join(f"  - {n}: {why}\n" for n, why in sorted(failed.items())))
            out.write(
                f"  their Jobs are kept in {NS} for diagnosis and yurt-manager does not try them again by itself; "
                "run convert again to retry them, or revert\n"
            )
            return 1
        for change in p.after:
            apply_change(api, change)
        out.write(f"yurtctl convert: done, {len(p.edge)} edge nodes, {len(p.cloud)} cloud nodes\n")
        return 0
    finally:
        lock.release()


def revert(
    api: access.Api,
    opts: plan.Options,
    settings: RunSettings,
    out: TextIO,
    *,
    dry_run: bool,
    charts: helm.Helm | None = None,
) -> int:
    """`charts`: how to run helm, needed when the tunnel chart is installed."""
    nodes = api.list("/api/v1/nodes")
    record = api.get(plan.RECORD_PATH)
    pods = api.list("/api/v1/pods")
    csrs = api.list("/apis/certificates.k8s.io/v1/certificatesigningrequests", labels=plan.YURTHUB_CSR_LABEL)
    retry = settings.identity
    p = plan.revert_plan(nodes, pods, record, csrs, tunnel=tunnel_installed(api), retry=retry)
    if record is None and not p.edge and not p.cloud and not p.tunnel:
        out.write("yurtctl revert: nothing to revert (no conversion recorded, no node labelled)\n")
        return 0
    by_name = {n["metadata"]["name"]: n for n in nodes}
    not_ready = [n for n in p.nodes if not plan.node_ready(by_name[n])]
    if not_ready:
        out.write(f"yurtctl revert: edge nodes not Ready, nothing was changed: {', '.join(not_ready)}\n")
        return 1
    args = node_args(opts, "revert")
    if p.tunnel and charts is None:
        raise errors.ConverterError(f"the tunnel chart ({helm.RELEASE}) is installed; removing it needs helm")
    if dry_run:
        out.write("\n".join(p.lines(opts.image, args)) + "\n(dry run: nothing was changed)\n")
        return 0
    lock = Lock(api, settings.identity, settings.lock_s)
    lock.acquire(settings.lock_wait_s)
    api = lock.guard(api)
    try:
        for change in p.labels:
            apply_change(api, change)
            out.write(f"  api    {change.what}\n")
        failed = watch_nodes(api, p, opts, settings, retry, out)
        if failed:
            out.write(f"yurtctl revert: {len(failed)} nodes failed; nothing else was undone:\n")
            out.write("".join(f"  - {n}: {why}\n" for n, why in sorted(failed.items())))
            return 1
        if charts is not None and p.tunnel:
            charts.uninstall()
            out.write(f"  helm   {helm.RELEASE} uninstalled from {helm.NAMESPACE}\n")
        for change in p.after:
            apply_change(api, change)
            out.write(f"  api    {change.what}\n")
        remove_jobs(api, None, settings.poll_s)
        out.write("yurtctl revert: done, the cluster is as convert found it\n")
        return 0
    finally:
        lock.release()
