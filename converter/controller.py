"""yurt-manager's control loop: one `sync` pass over nodes, pods and certificate requests, under a Lease.

Each pass is level-triggered: it reads what is, asks the pure cores (`tolerations`, `csr`, `lease`) what
should be, and writes the difference. A pass that meets an error logs it, counts it and leaves the rest to
the next pass (a conflict only means the object changed under us: it is decided again from its new state).

What is comes from informers (`converter.informer`): nodes, pods and certificate requests are listed once
and then watched, and every change starts a pass at once (at most one pass per `MIN_GAP_S`); without a
change a pass still runs every `resync_s`, from the local copies. So the apiserver sees watches and the
writes, not a list of every pod every few seconds. `watch=False` lists on every pass instead.

The Lease is kept on its own clock, not the pass's: a thread renews it every third of its duration,
whatever `resync_s` is, and a replica acts (writes a pod or a CSR decision) only while its last successful
renewal is younger than two thirds of the duration, counted on its own monotonic clock from before the
renewal was sent. So a replica that loses the Lease (another took it, or the apiserver stopped answering)
stops writing, even in the middle of a pass, before a rival can take over.

YurtAppSets (one Deployment per NodePool) are handled at the end of every pass by their own shell,
`converter.appsetcontroller`, with informers of its own that wake the same loop and writes behind the same
Lease check.

NodePools (`converter.poolsync`, deciding with the pure `converter.nodepool`) are kept in the same pass, once
the NodePool CRD exists and its collection is listed: members' attributes, pools' status, refusals told.

Conversion by label (`converter.conversionsync`, deciding with the pure `converter.nodeconversion`) comes
next in the pass: a node that becomes an edge node gets the node Job `yurtctl convert` always ran, one that
stops being one the revert Job, a few at a time, the outcome told as a node condition and Events.

Endpoints of pods on autonomous, unreachable nodes (issue "Service continuity"): every replica serves the
admission webhook (`converter.endpointwebhook`, deciding from these informer copies); the leader's pass
(`converter.continuitysync`, last in the pass) lets go of what is no longer kept, makes good a write the
webhook missed, and writes the webhook's CA into its configuration.

For CSR decisions (`converter.csr`) each pass with pending requests also reads the names the
kube-apiserver's serving certificate carries, from the TLS handshake itself (`apiserver_names`), so a node
is never approved a certificate for one of them.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable

import prometheus_client as prom
from cryptography import x509

from converter import (
    access,
    appsetcontroller,
    continuitysync,
    conversionsync,
    csr,
    endpointwebhook,
    errors,
    informer,
    lease,
    poolsync,
    tolerations,
)

log = logging.getLogger(__name__)

NODES = "/api/v1/nodes"
PODS = "/api/v1/pods"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
MIN_GAP_S = 0.2
"""Shortest time between two passes, so a burst of changes is handled in one pass."""
SERVED_NAMES_TTL_S = 60.0
"""How long the names read from the apiserver's serving certificate are reused before it is read again."""


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
    """Longest time between passes (a change seen by a watch starts one at once). The Lease is renewed on
    its own clock (`renew_s`), whatever this is."""
    cluster_domain: str = "cluster.local"
    watch: bool = True
    """Keep nodes, pods and CSRs by list then watch; False: list them on every pass."""
    door_addresses: tuple[str, ...] = (csr.HUB_POD_ADDRESS,)
    """Where pods reach yurthub's HTTPS door: approved in its serving certificate."""
    approve_apiserver_names: bool = False
    """Approve loopback, `localhost` and the `kubernetes` Service's names and ClusterIPs in a yurthub serving
    certificate (a certificate that can impersonate the apiserver to pods)."""
    tenant_groups: tuple[str, ...] = ()
    """`openyurt:tenant:*` groups a yurthub client certificate may carry."""
    reserved_names: tuple[str, ...] = ()
    """Names never approved for a node, besides those in the apiserver's serving certificate (for example the
    public name of a load balancer in front of several apiservers)."""
    max_parallel_conversions: int = 5
    """Node Jobs (conversion by label) running at once, at most; the settings `yurtctl convert` writes
    (its `--parallel`) may lower it."""

    @property
    def renew_s(self) -> float:
        """How often the Lease is renewed: a third of its duration."""
        return self.lease_duration_s / 3

    @property
    def valid_s(self) -> float:
        """How long after its last successful renewal a replica still acts: two thirds of the duration."""
        return self.lease_duration_s * 2 / 3


class NotLeading(errors.ConverterError):
    """The Lease is no longer ours: the pass stops before its next write."""


def apiserver_names(server: str, ca_file: str, timeout_s: float = 10.0) -> frozenset[str]:
    """The subject alternative names (IPs as text, DNS names in lower case) of the serving certificate the
    apiserver at `server` presents, verified against `ca_file`."""
    url = urllib.parse.urlsplit(server)
    host, port = url.hostname or "", url.port or 443
    context = ssl.create_default_context(cafile=ca_file or None)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise errors.Unreachable(f"reading the apiserver's serving certificate from {host}:{port}: {exc}") from exc
    if not der:
        raise errors.Unreachable(f"{host}:{port} presented no certificate")
    try:
        sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    ips = {str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)}
    return frozenset(ips | {d.lower() for d in sans.value.get_values_for_type(x509.DNSName)})


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
        self.pools = prom.Counter(
            "yurt_manager_nodepool_writes_total",
            "NodePool writes (node attributes, pool status, refusal events) and refused writes, by what",
            ["what"],
            registry=registry,
        )
        self.endpoints = prom.Counter(
            "yurt_manager_endpoint_writes_total",
            "EndpointSlices and Endpoints written by the pass (kept ready or let go) and caBundle writes, by what",
            ["what"],
            registry=registry,
        )
        self.admitted = prom.Counter(
            "yurt_manager_endpoint_reviews_total",
            "admission reviews answered by the endpoint webhook, by resource and outcome (kept, unchanged)",
            ["resource", "outcome"],
            registry=registry,
        )
        self.conversions = prom.Counter(
            "yurt_manager_node_conversions_total",
            "conversion by label: node Jobs started, outcomes recorded (converted, reverted, failed), failed Jobs "
            "removed on request, refused writes (error)",
            ["what"],
            registry=registry,
        )
        self.lists = prom.Counter(
            "yurt_manager_lists_total",
            "full lists of a collection by the informers (then they watch), by resource",
            ["resource"],
            registry=registry,
        )


class Manager:
    """The controller's state between passes: whether it leads, when it last renewed, when it last synced."""

    def __init__(
        self,
        api: access.Api,
        settings: Settings,
        metrics: Metrics,
        served_names: Callable[[], frozenset[str]] = frozenset,
        webhook: endpointwebhook.Webhook | None = None,
    ) -> None:
        """`served_names`: the names in the apiserver's serving certificate (`apiserver_names` of the
        apiserver this replica talks to; nothing for an in-memory Api). `webhook`: the endpoint webhook to
        serve (every replica serves it; only the leader writes its caBundle and endpoints)."""
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.served_names = served_names
        self._served: tuple[float, frozenset[str]] | None = None
        self.leading = False
        self._renewed = -1e9
        self._lead_lock = threading.Lock()
        self._elector: threading.Thread | None = None
        self.last_pass = 0.0
        """Monotonic time of the last pass that reached the apiserver (liveness)."""
        self.synced = False
        """Whether one whole pass has succeeded (readiness)."""
        self.stopping = threading.Event()
        self.wake = threading.Event()
        """Set by the informers on every change: a pass is due."""
        self.informers: dict[str, informer.Informer] = {}
        self._elected = -1e9
        self.appsets = appsetcontroller.AppSets(
            api, self._must_lead, self.wake.set, self.stopping, lambda r: self.metrics.lists.labels(r).inc
        )
        self.pool_sync = poolsync.PoolSync(api, self._must_lead, lambda what: metrics.pools.labels(what).inc())
        self.conversion = conversionsync.ConversionSync(
            api,
            self._must_lead,
            lambda what: metrics.conversions.labels(what).inc(),
            max_parallel=settings.max_parallel_conversions,
        )
        self.webhook = webhook
        self.endpoint_sync = continuitysync.EndpointSync(
            api,
            self._must_lead,
            self.read,
            lambda what: metrics.endpoints.labels(what).inc(),
            webhook.ca if webhook is not None else lambda: None,
        )

    @property
    def _lease_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.settings.namespace}/leases/{self.settings.lease_name}"

    def elect(self, now: float) -> bool:
        """Take or renew the Lease; return whether this replica leads now."""
        if not self.settings.leader_elect:
            self.leading = True
            return True
        s = self.settings
        with self._lead_lock:
            was = self.leading
            sent = time.monotonic()
            try:
                current = self.api.get(self._lease_path)
                want = lease.next_lease(current, s.identity, now, s.lease_duration_s, s.lease_name, s.namespace)
                if want is None:
                    self.leading = False
                elif current is None:
                    self.api.create(self._lease_path.rsplit("/", 1)[0], want)
                    self.leading, self._renewed = True, sent
                else:
                    self.api.replace(self._lease_path, want)
                    self.leading, self._renewed = True, sent
            except errors.ConverterError as exc:
                log.warning("lease renewal failed identity=%s error=%s", s.identity, exc)
                if time.monotonic() - self._renewed >= s.valid_s:
                    self.leading = False
        if self.leading != was:
            log.info("leadership %s identity=%s", "acquired" if self.leading else "lost", s.identity)
        self.metrics.leader.set(1 if self.leading else 0)
        return self.leading

    def acting(self) -> bool:
        """Whether this replica may write now: it leads and its last renewal is recent on its own clock."""
        if not self.settings.leader_elect:
            return True
        return self.leading and time.monotonic() - self._renewed < self.settings.valid_s

    def _must_lead(self) -> None:
        if not self.acting():
            raise NotLeading(f"the Lease {self.settings.namespace}/{self.settings.lease_name} is not ours any more")

    def _keep_lease(self) -> None:
        """The elector thread: renew every `renew_s`, however long a pass or the resync takes."""
        while not self.stopping.is_set():
            self.elect(time.time())
            self.wake.set()  # a change of leadership is worth a pass
            self.stopping.wait(self.settings.renew_s)

    def start_elector(self) -> None:
        if self.settings.leader_elect and self._elector is None:
            self._elector = threading.Thread(target=self._keep_lease, name="yurt-manager-lease", daemon=True)
            self._elector.start()

    def release(self) -> None:
        if self._elector is not None:
            self._elector.join(self.settings.renew_s + 1)
        with self._lead_lock:
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

    def make_informers(self) -> list[informer.Informer]:
        """Every informer of this replica, not started: one per collection, the NodePools' shared by the pool
        pass and the YurtAppSet shell."""
        for path in (NODES, PODS, CSRS, poolsync.POOLS, conversionsync.JOBS):
            counter = self.metrics.lists.labels(path.rsplit("/", 1)[-1])
            self.informers[path] = informer.Informer(self.api, path, self.wake.set, self.stopping, listed=counter.inc)
        return [*self.informers.values(), *self.appsets.make_informers(self.informers)]

    def start_informers(self) -> None:
        for watched in self.make_informers():
            watched.start()
        self.endpoint_sync.start_informers(self.wake.set, self.stopping, lambda r: self.metrics.lists.labels(r).inc)

    def read(self, path: str) -> list[access.Obj]:
        """A collection from its informer copy (or listed, without informers); `errors.Unreachable` before
        its first list."""
        return self._read(path)

    def _read(self, path: str) -> list[access.Obj]:
        watched = self.informers.get(path)
        if watched is None:
            return self.api.list(path)
        if not watched.synced.is_set():
            raise errors.Unreachable(f"{path} not listed yet")
        return watched.items()

    def sync(self) -> None:
        """One pass: pods' tolerations, certificate requests, NodePools, node conversions, YurtAppSets, then
        endpoints of pods on unreachable autonomous nodes (`converter.continuitysync`)."""
        nodes = {n["metadata"]["name"]: n for n in self._read(NODES)}
        self.sync_pods(nodes)
        self.sync_csrs(nodes)
        self.sync_pools(nodes)
        self.sync_conversions(nodes)
        self.appsets.sync()
        self.endpoint_sync.sync(nodes)
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
            self._must_lead()
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

    def sync_conversions(self, nodes: dict[str, access.Obj]) -> None:
        """Conversion by label (`converter.conversionsync`): NodePools count once listed (none without the
        CRD), Jobs are those of the node Jobs' namespace; nothing before the Jobs are listed (without the
        Role, the rest of the pass goes on)."""
        jobs = self.informers.get(conversionsync.JOBS)
        if jobs is not None and not jobs.synced.is_set():
            return
        pools: list[access.Obj] = []
        watched = self.informers.get(poolsync.POOLS)
        if watched is None or watched.synced.is_set():
            try:
                pools = self._read(poolsync.POOLS)
            except errors.NotFound:
                pools = []
        self.conversion.sync(nodes, pools, self._read(conversionsync.JOBS))

    def sync_pools(self, nodes: dict[str, access.Obj]) -> None:
        """NodePools (`converter.poolsync`), once they are listed: without the CRD (no `yurtctl convert`) or
        before the first list, the pass goes on without them."""
        watched = self.informers.get(poolsync.POOLS)
        if watched is not None and not watched.synced.is_set():
            return
        try:
            pools = self._read(poolsync.POOLS)
        except errors.NotFound:
            return
        self.pool_sync.sync(nodes, pools)

    def csr_context(self, nodes: dict[str, access.Obj]) -> csr.Context:
        addresses = {
            name: frozenset(
                (str(a.get("type", "")), str(a["address"]))
                for a in (n.get("status", {}).get("addresses") or [])
                if a.get("address")
            )
            for name, n in nodes.items()
        }
        svc = self.api.get("/api/v1/namespaces/default/services/kubernetes") or {}
        spec = svc.get("spec", {})
        ips = frozenset(spec.get("clusterIPs") or [spec.get("clusterIP", "")]) - {"", "None"}
        s = self.settings
        return csr.Context(
            nodes=addresses,
            service_ips=ips,
            apiserver_names=self._apiserver_names() | frozenset(s.reserved_names),
            cluster_domain=s.cluster_domain,
            door_addresses=frozenset(s.door_addresses),
            approve_apiserver_names=s.approve_apiserver_names,
            tenant_groups=frozenset(s.tenant_groups),
        )

    def _apiserver_names(self) -> frozenset[str]:
        """The apiserver's serving names, read again once `SERVED_NAMES_TTL_S` old (a pending request nobody
        decides must not cost a TLS handshake per pass)."""
        if self._served is None or time.monotonic() - self._served[0] >= SERVED_NAMES_TTL_S:
            self._served = (time.monotonic(), self.served_names())
        return self._served[1]

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
            self._must_lead()
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
        """One turn of the endless loop: sync if acting as leader. Without the elector thread (a caller
        driving the steps itself) it also elects, at most once per `resync_s` or `renew_s`, whichever is
        shorter. Never raises for cluster trouble."""
        every = min(self.settings.resync_s, self.settings.renew_s)
        if self._elector is None and time.monotonic() - self._elected >= every:
            self._elected = time.monotonic()
            self.elect(time.time())
        if not self.acting():
            self.last_pass = time.monotonic()  # a healthy standby is alive too
            self.synced = True
            return
        try:
            self.sync()
        except NotLeading as exc:
            log.warning("pass stopped: %s identity=%s", exc, self.settings.identity)
        except errors.ConverterError as exc:
            log.warning("sync pass failed error=%s", exc)
            self.metrics.errors.inc()

    def run(self) -> None:
        self.start_elector()
        if self.settings.watch:
            self.start_informers()
        if self.webhook is not None:
            self.webhook.start(self.stopping, endpointwebhook.ReadFacts(self.read, self.api.get))
        while not self.stopping.is_set():
            self.step()
            self.wake.wait(self.settings.resync_s)
            self.wake.clear()
            self.stopping.wait(MIN_GAP_S)
        if self.webhook is not None:
            self.webhook.stop()
        self.release()
