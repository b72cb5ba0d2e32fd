"""yurt-manager's YurtAppSet loop: the thin I/O shell around `converter.appset`.

`Manager` (in `converter.controller`) owns one `AppSets` and calls `sync` at the end of every pass. What is
comes from three informers (YurtAppSets, NodePools, and only the Deployments labelled
`apps.openyurt.io/ref-yurtappset`), whose changes wake the Manager's loop like its own informers do; the
NodePool informer is the one the Manager's pool pass reads (`make_informers`), so NodePools are listed and
watched once. Every
write is preceded by `must_lead()` (the Manager's Lease check), so a replica that lost the Lease stops
before its next write.

A Deployment is created with `generateName`, so until the informer has seen it a second pass would create
another: the shell remembers what it created (`_created`) and counts it as existing until the informer
shows it, for at most `CREATED_TTL_S`. Any other write that fails (conflict, gone, refused) is decided
again on the next pass from fresh state; its message goes into the YurtAppSet's conditions.

Until the YurtAppSet and NodePool collections have been listed (their CRDs may not be installed yet) a pass
skips YurtAppSets and leaves the rest of yurt-manager's work alone.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping

from converter import access, appset, errors, informer

log = logging.getLogger(__name__)

DEPLOYMENTS = f"{appset.DEPLOYMENTS}?labelSelector={appset.REF_LABEL}"
"""Only the Deployments a YurtAppSet made (the label), not every Deployment of the cluster."""
PATHS = (appset.YURTAPPSETS, appset.NODEPOOLS, DEPLOYMENTS)
CREATED_TTL_S = 60.0


class AppSets:
    def __init__(
        self,
        api: access.Api,
        must_lead: Callable[[], None],
        changed: Callable[[], None],
        stopping: threading.Event,
        listed: Callable[[str], Callable[[], None]] = lambda _: lambda: None,
    ) -> None:
        """`must_lead` raises when this replica may not write; `changed` is called on every change seen;
        `listed(resource)` gives the callback counting that resource's full lists."""
        self.api = api
        self.must_lead = must_lead
        self.changed = changed
        self.stopping = stopping
        self.listed = listed
        self.informers: dict[str, informer.Informer] = {}
        self.told: dict[str, set[tuple[str, str]]] = {}
        """YurtAppSet uid → the Warning Events (reason, message) already told and still true: each is told
        once, and again only after it went away and came back, not on every pass."""
        self._created: dict[str, tuple[float, access.Obj]] = {}
        """namespace/name → (monotonic time, object) of Deployments created and not yet seen by the informer."""

    def make_informers(self, shared: Mapping[str, informer.Informer]) -> list[informer.Informer]:
        """Informers for `PATHS`, not started: one from `shared` where it already watches that collection (the
        NodePools, which yurt-manager's pool pass watches too), else a new one. Returns only the new ones,
        for the caller to start."""
        made = []
        for path in PATHS:
            watched = shared.get(path)
            if watched is None:
                resource = path.split("?", 1)[0].rsplit("/", 1)[-1]
                watched = informer.Informer(self.api, path, self.changed, self.stopping, listed=self.listed(resource))
                made.append(watched)
            self.informers[path] = watched
        return made

    def start_informers(self) -> None:
        for watched in self.make_informers({}):
            watched.start()

    def _read(self, path: str) -> list[access.Obj] | None:
        watched = self.informers.get(path)
        if watched is None:
            try:
                return self.api.list(path.split("?", 1)[0], labels=path.partition("labelSelector=")[2])
            except errors.NotFound:
                return None  # the CRD is not installed
        return watched.items() if watched.synced.is_set() else None

    def _deployments(self, listed: list[access.Obj]) -> list[access.Obj]:
        seen = {_key(d) for d in listed}
        now = time.monotonic()
        for key, (at, _) in list(self._created.items()):
            if key in seen or now - at > CREATED_TTL_S:
                del self._created[key]
        return [*listed, *(obj for _, obj in self._created.values())]

    def sync(self) -> None:
        """One pass over every YurtAppSet. Raises only `controller.NotLeading` (through `must_lead`)."""
        yases, pools, listed = (self._read(p) for p in PATHS)
        if yases is None or pools is None or listed is None:
            return
        deployments = self._deployments(listed)
        for yas in yases:
            self.sync_one(yas, pools, deployments)
        self.told = {uid: told for uid, told in self.told.items() if uid in {_uid(y) for y in yases}}

    def tell(
        self, yas: access.Obj, result: appset.Plan, failed: dict[str, str], done: list[tuple[str, str, str]], now: str
    ) -> None:
        """Events about the YurtAppSet: Normal for each Deployment written, Warning for each refusal not told
        yet. An Event that cannot be written is logged and dropped: Events are best effort."""
        told = self.told.setdefault(_uid(yas), set())
        warnings = set(appset.warnings(result, failed))
        events: list[tuple[tuple[str, str] | None, access.Obj]] = [
            (
                None,
                appset.event(yas, "Normal", appset.EVENT_REASONS[verb], f"Deployment {d} of pool {pool} {verb}d", now),
            )
            for verb, pool, d in done
        ]
        events += [((r, m), appset.event(yas, "Warning", r, m, now)) for r, m in sorted(warnings - told)]
        told &= warnings
        ns = yas["metadata"].get("namespace", "default")
        for warning, body in events:
            self.must_lead()
            try:
                self.api.create(f"/api/v1/namespaces/{ns}/events", body)
            except errors.ConverterError as exc:
                log.warning(
                    "yurtappset event refused yas=%s/%s reason=%s error=%s",
                    ns,
                    body["involvedObject"]["name"],
                    body["reason"],
                    exc,
                )
                continue
            if warning is not None:
                told.add(warning)

    def sync_one(self, yas: access.Obj, pools: list[access.Obj], deployments: list[access.Obj]) -> None:
        meta = yas["metadata"]
        if meta.get("deletionTimestamp"):
            return  # the garbage collector removes its Deployments
        ns, name = meta.get("namespace", "default"), meta["name"]
        result = appset.plan(yas, pools, deployments)
        failed: dict[str, str] = {}
        done: list[tuple[str, str, str]] = []
        """(verb, pool, Deployment name) of every write that succeeded."""
        collection = f"/apis/apps/v1/namespaces/{ns}/deployments"
        after = list(deployments)
        for action in result.actions:
            self.must_lead()
            try:
                if action.verb == "create" and action.body is not None:
                    made = self.api.create(collection, action.body)
                    self._created[_key(made)] = (time.monotonic(), made)
                    after.append(made)
                    log.info("yurtappset workload created yas=%s/%s pool=%s name=%s", ns, name, action.pool, _n(made))
                    done.append((action.verb, action.pool, _n(made)))
                elif action.verb == "update" and action.body is not None:
                    made = self.api.replace(f"{collection}/{action.name}", action.body)
                    after = [made if _key(d) == _key(made) else d for d in after]
                    log.info(
                        "yurtappset workload updated yas=%s/%s pool=%s name=%s", ns, name, action.pool, action.name
                    )
                    done.append((action.verb, action.pool, action.name))
                else:
                    self.api.delete(f"{collection}/{action.name}")
                    after = [d for d in after if _key(d) != f"{ns}/{action.name}"]
                    log.info(
                        "yurtappset workload deleted yas=%s/%s pool=%s name=%s", ns, name, action.pool, action.name
                    )
                    done.append((action.verb, action.pool, action.name))
            except (errors.Conflict, errors.NotFound):
                continue  # changed or gone meanwhile: decided again next pass
            except errors.ConverterError as exc:
                log.warning("yurtappset %s refused yas=%s/%s pool=%s error=%s", action.verb, ns, name, action.pool, exc)
                failed.setdefault(action.verb, f"pool {action.pool}: {exc}")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.tell(yas, result, failed, done, now)
        new = appset.status(yas, pools, after, result, failed, now)
        if new == (yas.get("status") or {}):
            return
        self.must_lead()
        try:
            self.api.patch(
                f"{appset.YURTAPPSETS.replace('/yurtappsets', '')}/namespaces/{ns}/yurtappsets/{name}/status",
                {"status": new},
            )
        except (errors.Conflict, errors.NotFound):
            return
        except errors.ConverterError as exc:
            log.warning("yurtappset status refused yas=%s/%s error=%s", ns, name, exc)


def _uid(yas: access.Obj) -> str:
    meta = yas.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace', '')}/{meta.get('name', '')}")


def _n(obj: access.Obj) -> str:
    return str(obj["metadata"]["name"])


def _key(obj: access.Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
