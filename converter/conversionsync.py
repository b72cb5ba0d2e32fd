"""yurt-manager's conversion pass: apply what `converter.nodeconversion` decides, node by node.

Per pass, for every node (sorted by name): decide from the node, the NodePools' types and the node's Job,
then write. Starting a node is, in this order: the annotation `RETRY_SEEN` (merge patch), the condition
`Converting`/`Reverting` with an Event, then the Job (an existing one of that name is left alone). An
outcome is the condition (and an Event) first, then, on success, the Job deleted; a failed Job is kept for
diagnosis until it is asked again; one that ran longer than the settings' timeout is deleted (its pod
stopped) and counted failed. So every step can be interrupted and decided again from what the cluster
holds. No more than `min(max_parallel, settings.parallel)` node Jobs run at once: a node waits its turn.

The condition is written with a merge patch of the node's status that carries the resourceVersion of the
copy it was decided from: a node changed since (kubelet's heartbeat) is a Conflict, decided again next pass,
never a lost update. A node whose informer copy is older than what this pass wrote last is skipped until
the copy catches up, so a lagging watch never makes a finished node start again.

Every write is preceded by `must_lead()`; errors other than a Conflict or a vanished object are logged and
counted, and the pass goes on with the next node.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Literal

from converter import access, components, errors, events, lease, nodeconversion, poolsync, runner

log = logging.getLogger(__name__)

JOBS = f"/apis/batch/v1/namespaces/{components.NAMESPACE}/jobs"
SETTINGS = f"/api/v1/namespaces/{components.NAMESPACE}/configmaps/{nodeconversion.SETTINGS_CONFIGMAP}"
Outcome = Literal["running", "done", "failed"]
CREATED_TTL_S = 60.0
"""How long a Job this replica created counts as running before the informer shows it (then it counts as
what the informer says)."""


def _rv(obj: access.Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class ConversionSync:
    """State between passes: only what this replica wrote last per node (to skip stale informer copies) and
    whether a settings problem was told already; the truth is on the nodes and the Jobs."""

    def __init__(
        self,
        api: access.Api,
        must_lead: Callable[[], None],
        counted: Callable[[str], None],
        *,
        max_parallel: int = 5,
    ) -> None:
        """`counted(what)` is called after each write ("started", "converted", "reverted", "failed",
        "job-removed") or with "error"."""
        self.api = api
        self.must_lead = must_lead
        self.counted = counted
        self.max_parallel = max(1, max_parallel)
        self.written: dict[str, int] = {}
        self.created: dict[str, float] = {}
        """Jobs this replica created that the Jobs' informer has not shown yet (name: when), counted as running
        so a lagging watch never lets more than the bound run."""
        self._told = ""

    def _settings(self) -> nodeconversion.JobSettings | None:
        try:
            settings = nodeconversion.parse_settings(self.api.get(SETTINGS))
        except nodeconversion.BadSettings as exc:
            problem = f"ConfigMap {SETTINGS}: {exc}"
            if problem != self._told:
                log.warning("node conversion stopped: %s", problem)
                self._told = problem
            return None
        self._told = ""
        return settings

    def sync(self, nodes: Mapping[str, access.Obj], pools: list[access.Obj], jobs: list[access.Obj]) -> None:
        pool_types = nodeconversion.pool_types(pools)
        now = time.time()
        by_node: dict[str, nodeconversion.JobState] = {}
        for obj in jobs:
            node = ((obj.get("metadata") or {}).get("labels") or {}).get(components.JOB_LABEL)
            created = lease.parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
            state = nodeconversion.job_state(obj, now, created)
            if node and state is not None and (node not in by_node or state.phase == "running"):
                by_node[node] = state
        busy = [n for n in nodes.values() if nodeconversion.wanted(n, pool_types) is not None]
        if not busy and not by_node:
            return
        settings = self._settings()
        listed = {str(j["metadata"]["name"]) for j in jobs}
        self.created = {k: t for k, t in self.created.items() if k not in listed and now - t < CREATED_TTL_S}
        running = sum(1 for s in by_node.values() if s.phase == "running") + len(self.created)
        limit = min(self.max_parallel, settings.parallel) if settings is not None else 0
        timeout = settings.node_timeout_s if settings is not None else float("inf")
        for name in sorted(nodes):
            node = nodes[name]
            if _rv(node) < self.written.get(name, 0):
                continue  # our last write is not in the informer's copy yet
            decision = nodeconversion.decide(node, pool_types, by_node.get(name), timeout)
            if decision.kind in ("none", "wait") and decision.action is None:
                continue
            try:
                if decision.kind == "start" and decision.action is not None:
                    if settings is None or running >= limit:
                        continue  # its turn comes when a running Job ends
                    self._start(node, decision.action, settings)
                    running += 1
                elif decision.kind == "wait" and decision.action is not None:
                    job_name = components.job_name(decision.action, name)
                    msg = nodeconversion.message(decision.action, "running", job_name)
                    self._condition(node, decision.action, "running", msg)
                else:
                    self._finish(node, decision, timeout)
            except (errors.Conflict, errors.NotFound):
                continue  # changed or gone meanwhile: decided again next pass
            except errors.ApiError as exc:
                log.warning("node conversion write refused node=%s error=%s", name, exc)
                self.counted("error")

    def _start(self, node: access.Obj, action: nodeconversion.Action, settings: nodeconversion.JobSettings) -> None:
        name = str(node["metadata"]["name"])
        retry = str(((node["metadata"].get("annotations")) or {}).get(nodeconversion.RETRY, ""))
        self.must_lead()
        patched = self.api.patch(
            f"/api/v1/nodes/{name}",
            {
                "metadata": {
                    "resourceVersion": node["metadata"].get("resourceVersion"),
                    "annotations": {nodeconversion.RETRY_SEEN: retry},
                }
            },
        )
        job = nodeconversion.job_for(settings, action, name, retry)
        job_name = str(job["metadata"]["name"])
        self._condition(patched, action, "running", nodeconversion.message(action, "running", job_name))
        self.must_lead()
        with contextlib.suppress(errors.Conflict):  # made by an earlier pass, not shown by the informer yet
            self.api.create(JOBS, job)
            self.created[job_name] = time.time()
        log.info("node conversion started node=%s action=%s job=%s", name, action, job_name)
        self.counted("started")

    def _finish(self, node: access.Obj, decision: nodeconversion.Decision, timeout_s: float) -> None:
        action = decision.action
        if action is None:
            return
        name = str(node["metadata"]["name"])
        job_name = components.job_name(action, name)
        job_path = f"{JOBS}/{job_name}"
        if decision.kind == "remove-job":
            self.must_lead()
            self.api.delete(job_path)
            self.counted("job-removed")
            return
        if decision.kind == "succeeded":
            if self._condition(node, action, "done", nodeconversion.message(action, "done", job_name)):
                log.info("node conversion done node=%s action=%s", name, action)
                self.counted(f"{action}ed")
            self.must_lead()
            self.api.delete(job_path)
            return
        why = runner.failure(self.api, job_name)
        if decision.kind == "timed-out":
            why = f"timed out after {timeout_s:.0f}s ({why})"
        if self._condition(node, action, "failed", nodeconversion.message(action, "failed", job_name, why)):
            log.warning("node conversion failed node=%s action=%s why=%s", name, action, why)
            self.counted("failed")
        if decision.kind == "timed-out":
            self.must_lead()
            self.api.delete(job_path)

    def _condition(self, node: access.Obj, action: nodeconversion.Action, outcome: Outcome, message: str) -> bool:
        """Write the condition (and an Event) unless it already says this; whether it was written."""
        now = lease.micro_time(time.time())[:19] + "Z"
        conditions = nodeconversion.with_condition(node, nodeconversion.new_condition(action, outcome, message, now))
        if conditions is None:
            return False
        name = str(node["metadata"]["name"])
        self.must_lead()
        patched = self.api.patch(
            f"/api/v1/nodes/{name}/status",
            {
                "metadata": {"resourceVersion": node["metadata"].get("resourceVersion")},
                "status": {"conditions": conditions},
            },
        )
        self.written[name] = _rv(patched)
        reason = conditions[-1]["reason"]
        try:
            self.api.create(
                poolsync.EVENTS, event(node, reason, message, "Warning" if outcome == "failed" else "Normal", now)
            )
        except errors.ApiError as exc:
            log.warning("node conversion event refused node=%s error=%s", name, exc)
        return True


def event(node: access.Obj, reason: str, message: str, kind: str, now: str) -> access.Obj:
    """An Event about `node` (in `default`, where Events about Nodes live), shown by `kubectl describe node`."""
    return events.about(events.node_reference(node), "default", reason, message, kind, now)
