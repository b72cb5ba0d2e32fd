"""yurt-manager's control loop: one `sync` pass over nodes, pods and certificate requests, under a Lease.

Each pass is level-triggered: it reads what is, asks the pure cores (`tolerations`, `csr`, `lease`) what
should be, and writes the difference. A pass that meets an error logs it, counts it and leaves the rest to
the next pass (a conflict only means the object changed under us: it is decided again from its new state).

What is comes from informers (`converter.informer`): nodes, pods and certificate requests are listed once
and then watched, and every change starts a pass at once (at most one pass per `MIN_GAP_S`); without a
change a pass still runs every `resync_s`, from the local copies. So the apiserver sees watches and the
writes, not a list of every pod every few seconds. `watch=False` lists on every pass instead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import prometheus_client as prom

from converter import access, csr, errors, informer, lease, tolerations

log = logging.getLogger(__name__)

NODES = "/api/v1/nodes"
PODS = "/api/v1/pods"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
MIN_GAP_S = 0.2
"""Shortest time between two passes, so a burst of changes is handled in one pass."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    identity: str
    """This replica's name in the Lease (host name plus a random suffix by default)."""
    leader_elect: bool = True
    """Act only while holding the Lease; off for a single replica run by hand."""
    namespace: str = "kube-system"
    """Namespace of the Lease."""
    lease_name: str = "yurt-manager"
    lease_duration_s: int = 15
    """How long a Lease not renewed stays with its holder."""
    resync_s: float = 2.0
    """Longest time between passes (a change seen by a watch starts one at once); also how often the Lease
    is renewed."""
    cluster_domain: str = "cluster.local"
    watch: bool = True
    """Keep nodes, pods and CSRs by list then watch; False: list them on every pass."""


class Metrics:
    def __init__(self, registry: prom.CollectorRegistry) -> None:
        self.leader = prom.Gauge("yurt_manager_leader", "1 while this replica holds the Lease", registry=registry)
        self.rewritten = prom.Counter(
            "yurt_manager_pod_tolerations_rewritten_total",
            "pods whose not-ready/unreachable tolerations were changed, by direction",
            ["direction"],
            registry=registry,
        )
        self.csr = prom.Counter(
            "yurt_manager_csr_decisions_total",
            "certificate requests decided, by verdict",
            ["verdict"],
            registry=registry,
        )
        self.errors = prom.Counter("yurt_manager_sync_errors_total", "passes that met an error", registry=registry)
        self.passes = prom.Counter("yurt_manager_sync_passes_total", "control-loop passes completed", registry=registry)
        self.lists = prom.Counter(
            "yurt_manager_lists_total",
            "full lists of a collection by the informers (then they watch), by resource",
            ["resource"],
            registry=registry,
        )


class Manager:
    """The controller's state between passes: whether it leads, when it last renewed, when it last synced."""

    def __init__(self, api: access.Api, settings: Settings, metrics: Metrics) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.leading = False
        self._renewed = 0.0
        self.last_pass = 0.0
        """Monotonic time of the last pass that reached the apiserver (liveness)."""
        self.synced = False
        """Whether one whole pass has succeeded (readiness)."""
        self.stopping = threading.Event()
        self.wake = threading.Event()
        """Set by the informers on every change: a pass is due."""
        self.informers: dict[str, informer.Informer] = {}
        self._elected = -1e9

    @property
    def _lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.settings.namespace}/leases/{self.settings.lease_name}"

    def elect(self, now: float) -> bool:
        """Take or renew the Lease; return whether this replica leads now."""
        if not self.settings.leader_elect:
            self.leading = True
            return True
        s = self.settings
        was = self.leading
        try:
            current = self.api.get(self._lease_path)
            want = lease.next_lease(current, s.identity, now, s.lease_duration_s, s.lease_name, s.namespace)
            if want is None:
                self.leading = False
            elif current is None:
                self.api.create(self._lease_path.rsplit("/", 1)[0], want)
                self.leading, self._renewed = True, time.monotonic()
            else:
                self.api.replace(self._lease_path, want)
                self.leading, self._renewed = True, time.monotonic()
        except errors.ConverterError as exc:
            log.warning("lease renewal failed identity=%s error=%s", s.identity, exc)
            if time.monotonic() - self._renewed >= s.lease_duration_s * 2 / 3:
                self.leading = False
        if self.leading != was:
            log.info("leadership %s identity=%s", "acquired" if self.leading else "lost", s.identity)
        self.metrics.leader.set(1 if self.leading else 0)
        return self.leading

    def release(self) -> None:
        if not (self.settings.leader_elect and self.leading):
            return
        try:
            current = self.api.get(self._lease_path)
            want = lease.released(current, self.settings.identity) if current else None
            if want is not None:
                self.api.replace(self._lease_path, want)
                log.info("lease released identity=%s", self.settings.identity)
        except errors.ConverterError as exc:
            log.warning("lease release failed error=%s", exc)
        self.leading = False

    def start_informers(self) -> None:
        for path in (NODES, PODS, CSRS):
            counter = self.metrics.lists.labels(path.rsplit("/", 1)[-1])
            watched = informer.Informer(self.api, path, self.wake.set, self.stopping, listed=counter.inc)
            self.informers[path] = watched
            watched.start()

    def _read(self, path: str) -> list[access.Obj]:
        watched = self.informers.get(path)
        if watched is None:
            return self.api.list(path)
        if not watched.synced.is_set():
            raise errors.Unreachable(f"{path} not listed yet")
        return watched.items()

    def sync(self) -> None:
        """One pass: pods' tolerations, then certificate requests."""
        nodes = {n["metadata"]["name"]: n for n in self._read(NODES)}
        self.sync_pods(nodes)
        self.sync_csrs(nodes)
        self.last_pass = time.monotonic()
        self.synced = True
        self.metrics.passes.inc()

    def sync_pods(self, nodes: dict[str, access.Obj]) -> None:
        for pod in self._read(PODS):
            node = nodes.get(pod.get("spec", {}).get("nodeName", ""))
            patch = tolerations.desired_patch(pod, tolerations.autonomy_of(node))
            if patch is None:
                continue
            meta = pod["metadata"]
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
            direction = "restored" if tolerations.autonomy_of(node) is None else "autonomous"
            try:
                self.api.patch(path, patch)
            except (errors.Conflict, errors.NotFound):
                continue  # changed or gone meanwhile: decided again next pass
            except errors.ApiError as exc:
                log.warning("pod toleration update refused pod=%s/%s error=%s", meta["namespace"], meta["name"], exc)
                self.metrics.errors.inc()
                continue
            log.info(
                "pod tolerations %s pod=%s/%s node=%s",
                direction,
                meta["namespace"],
                meta["name"],
                pod["spec"]["nodeName"],
            )
            self.metrics.rewritten.labels(direction).inc()

    def csr_context(self, nodes: dict[str, access.Obj]) -> csr.Context:
        addresses = {
            name: frozenset(a["address"] for a in (n.get("status", {}).get("addresses") or []) if a.get("address"))
            for name, n in nodes.items()
        }
        svc = self.api.get("/api/v1/namespaces/default/services/kubernetes") or {}
        spec = svc.get("spec", {})
        ips = frozenset(spec.get("clusterIPs") or [spec.get("clusterIP", "")]) - {"", "None"}
        return csr.Context(node_addresses=addresses, service_ips=ips, cluster_domain=self.settings.cluster_domain)

    def sync_csrs(self, nodes: dict[str, access.Obj]) -> None:
        pending = [c for c in self._read(CSRS) if not c.get("status", {}).get("conditions")]
        if not pending:
            return
        ctx = self.csr_context(nodes)
        for request in pending:
            decision = csr.decide(request, ctx)
            if decision.verdict == "ignore":
                continue
            name = request["metadata"]["name"]
            body = dict(request)
            body["status"] = dict(request.get("status") or {})
            body["status"]["conditions"] = [*(body["status"].get("conditions") or []), csr.condition(decision)]
            try:
                self.api.replace(f"{CSRS}/{name}/approval", body)
            except (errors.Conflict, errors.NotFound):
                continue
            level = logging.INFO if decision.verdict == "approve" else logging.WARNING
            log.log(
                level,
                "csr %s name=%s requester=%s signer=%s reason=%s message=%s",
                "approved" if decision.verdict == "approve" else "denied",
                name,
                request["spec"].get("username"),
                request["spec"].get("signerName"),
                decision.reason,
                decision.message,
            )
            self.metrics.csr.labels(decision.verdict).inc()

    def step(self) -> None:
        """One turn of the endless loop: elect (at most once per `resync_s`), then sync if leading. Never
        raises for cluster trouble."""
        if time.monotonic() - self._elected >= self.settings.resync_s:
            self._elected = time.monotonic()
            self.elect(time.time())
        if not self.leading:
            self.last_pass = time.monotonic()  # a healthy standby is alive too
            self.synced = True
            return
        try:
            self.sync()
        except errors.ConverterError as exc:
            log.warning("sync pass failed error=%s", exc)
            self.metrics.errors.inc()

    def run(self) -> None:
        if self.settings.watch:
            self.start_informers()
        while not self.stopping.is_set():
            self.step()
            self.wake.wait(self.settings.resync_s)
            self.wake.clear()
            self.stopping.wait(MIN_GAP_S)
        self.release()
