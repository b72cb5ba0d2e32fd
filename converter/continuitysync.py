"""yurt-manager's endpoint pass: what the admission webhook cannot do alone.

The webhook (`converter.endpointwebhook`) changes the EndpointSlice and Endpoints controllers' writes as they
happen. Two things need a writer of their own, and this pass is it:
- letting go: once a node's autonomy duration lapses, or autonomy is turned off, while the node is still
  unreachable, nothing makes the stock controllers write again (they react to pods and Services, not to a
  clock or to a Node's annotations), so the endpoints they would now write as not ready are written so here;
- a write the webhook missed (yurt-manager was down, or its copy of the node was a moment behind) is made
  good here: kept endpoints are written ready.
Both are decided by `continuity.reconcile_slice` / `reconcile_endpoints` and written under the object's
resourceVersion (a Conflict is decided again next pass), after `must_lead()`. Only objects the stock
controllers manage (slices by `continuity.SLICE_MANAGED_BY`; Endpoints of a Service with a selector) with an
endpoint on an unreachable node are looked at, and a Service that publishes not-ready addresses is left as it
is.

It also writes the webhook's CA into the MutatingWebhookConfiguration `yurtctl convert` installed (its
`caBundle`), when it differs, at most every `CA_CHECK_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from converter import access, components, continuity, errors, informer

log = logging.getLogger(__name__)

SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
ENDPOINTS = "/api/v1/endpoints"
PODS = "/api/v1/pods"
CONFIGS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CA_CHECK_S = 10.0
SERVICE_LABEL = "kubernetes.io/service-name"


class EndpointSync:
    def __init__(
        self,
        api: access.Api,
        must_lead: Callable[[], None],
        read: Callable[[str], list[access.Obj]],
        counted: Callable[[str], None],
        ca_bundle: Callable[[], bytes | None],
    ) -> None:
        """`read(path)` lists a collection (the informer copy when there is one); `counted(what)` after each
        write ("endpointslices", "endpoints", "cabundle") or with "error"; `ca_bundle()` the webhook's CA,
        once known."""
        self.api = api
        self.must_lead = must_lead
        self.read = read
        self.counted = counted
        self.ca_bundle = ca_bundle
        self.informers: dict[str, informer.Informer] = {}
        self._ca_checked = -1e9
        self._ca_written: bytes | None = None

    def start_informers(
        self, changed: Callable[[], None], stopping: threading.Event, listed: Callable[[str], Callable[[], None]]
    ) -> None:
        for path in (SLICES, ENDPOINTS):
            watched = informer.Informer(self.api, path, changed, stopping, listed=listed(path.rsplit("/", 1)[-1]))
            self.informers[path] = watched
            watched.start()

    def _objects(self, path: str) -> list[access.Obj]:
        """The collection, or nothing before its first list (the rest of the pass does not wait for it)."""
        watched = self.informers.get(path)
        if watched is None:
            return self.api.list(path)
        return watched.items() if watched.synced.is_set() else []

    def sync(self, nodes: Mapping[str, access.Obj], now: float | None = None) -> None:
        self.sync_ca_bundle()
        unreachable = {name for name, n in nodes.items() if continuity.unreachable(n)}
        if not unreachable:
            return
        now = time.time() if now is None else now
        pods = {
            (str(p["metadata"].get("namespace", "")), str(p["metadata"]["name"])): p
            for p in self.read(PODS)
            if (p.get("spec") or {}).get("nodeName") in unreachable
        }
        for slice_ in self._objects(SLICES):
            labels = (slice_.get("metadata") or {}).get("labels") or {}
            if not continuity.SLICE_MANAGED_BY.items() <= labels.items():
                continue
            if not any(t.node in unreachable for _, t in continuity.slice_targets(slice_)):
                continue
            self._reconcile(
                slice_, str(labels.get(SERVICE_LABEL, "")), nodes, pods, now, continuity.reconcile_slice, SLICES
            )
        for endpoints in self._objects(ENDPOINTS):
            meta = endpoints.get("metadata") or {}
            if not any(t.node in unreachable for *_, t in continuity.endpoints_targets(endpoints)):
                continue
            self._reconcile(
                endpoints, str(meta.get("name", "")), nodes, pods, now, continuity.reconcile_endpoints, ENDPOINTS
            )

    def _reconcile(
        self,
        obj: access.Obj,
        service: str,
        nodes: Mapping[str, access.Obj],
        pods: Mapping[continuity.PodKey, access.Obj],
        now: float,
        decide: Callable[..., access.Obj | None],
        collection: str,
    ) -> None:
        want = decide(obj, nodes, pods, now, publish_not_ready=False)
        if want is None:
            return
        meta = obj["metadata"]
        namespace, name = str(meta.get("namespace", "")), str(meta["name"])
        svc = self.api.get(f"/api/v1/namespaces/{namespace}/services/{service}") if service else None
        if collection == ENDPOINTS and not (svc or {}).get("spec", {}).get("selector"):
            return  # Endpoints of a Service without a selector are someone else's
        if svc is not None and (svc.get("spec") or {}).get("publishNotReadyAddresses"):
            want = decide(obj, nodes, pods, now, publish_not_ready=True)
            if want is None:
                return
        group, resource = collection.rsplit("/", 1)
        path = f"{group}/namespaces/{namespace}/{resource}/{name}"
        self.must_lead()
        try:
            self.api.replace(path, want)
        except (errors.Conflict, errors.NotFound):
            return  # changed or gone meanwhile: decided again next pass
        except errors.ApiError as exc:
            log.warning("endpoint update refused object=%s/%s error=%s", namespace, name, exc)
            self.counted("error")
            return
        log.info("endpoints reconciled resource=%s object=%s/%s", resource, namespace, name)
        self.counted(resource)

    def sync_ca_bundle(self) -> None:
        """Write the webhook's CA into our MutatingWebhookConfiguration where it differs (it is replaced with
        no caBundle each time `yurtctl convert` applies it again)."""
        ca = self.ca_bundle()
        if ca is None or time.monotonic() - self._ca_checked < CA_CHECK_S:
            return
        self._ca_checked = time.monotonic()
        config = self.api.get(f"{CONFIGS}/{components.ENDPOINT_WEBHOOK}")
        if config is None:
            return
        want = components.with_ca_bundle(config, ca)
        if want is None:
            return
        self.must_lead()
        try:
            self.api.replace(f"{CONFIGS}/{components.ENDPOINT_WEBHOOK}", want)
        except (errors.Conflict, errors.NotFound):
            self._ca_checked = -1e9  # look again next pass
            return
        log.info("webhook caBundle written configuration=%s", components.ENDPOINT_WEBHOOK)
        self.counted("cabundle")
