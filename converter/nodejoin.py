"""`yurtctl node join` / `yurtctl node reset`: make a plain machine an edge node behind yurthub from its
first boot, and take it back to what it was.

The machine has containerd, the kubelet and kubeadm's packaging of it (`kubelet.service` with the
`10-kubeadm.conf` drop-in that reads `kubeadm-flags.env`), not enabled and never started, and yurt-edge's
self-contained executable unpacked in /opt/yurt-edge (copied from `make dist`'s output, as the node Job
installs it). Join, in order:

1. preflight, before anything changes: the executable and the kubelet unit are there; nothing of a kubelet
   or yurthub set up already (a kubeconfig, kubeadm-flags.env, config.yaml, yurthub's unit or state, a
   running kubelet); yurthub's loopback ports free; the token well-formed.
2. discovery (`Discovery`): `cluster-info` is fetched from `--server` over TLS without trusting it yet,
   its CA is accepted only if the SHA-256 of its SubjectPublicKeyInfo equals `--ca-cert-hash`, and the
   server is then asked again over TLS verified against that CA (hostname included). With the token the
   cluster's `kube-system/kubelet-config` is read (kubeadm's kubelet configuration; a default otherwise): a
   token the cloud refuses stops the join here, before the machine changes.
3. yurthub first: `/etc/kubernetes/pki/ca.crt`, the token in `/etc/yurthub/join-token` (0600 from its first
   byte), `/etc/yurthub/yurthub.env` naming that file (never the token: the process list is world-readable),
   `yurthub.service`; enabled, started, and answering `/v1/healthz`, which it does once it has its node
   client certificate by CSR with the token (approved by the controller-manager through the join RBAC).
4. kubelet through yurthub from its first start: `/etc/kubernetes/kubelet-yurthub.conf` (yurthub's plain
   loopback port, no credentials: yurthub adds the node's identity), `/var/lib/kubelet/config.yaml`,
   `kubeadm-flags.env` with `--kubeconfig=` that file, an empty `--bootstrap-kubeconfig=` (kubelet never
   reaches the cloud by itself) and `--node-labels` with the pool (`apps.openyurt.io/nodepool`) and
   `openyurt.io/is-edge-worker=true`; kubelet enabled and started.
5. verified: yurthub has forwarded kubelet's requests and the Node is Ready, read through yurthub.

Every path join creates is recorded first in `STATE` (owner-only) with what was there before (kubelet's
state directory entries, containerd's pod containers, network namespaces, whether kubelet was enabled), so
a failure at any step undoes exactly what was done (`undo`), `yurtctl node reset` does the same later, and a
join interrupted hard (power loss) is undone by the next join before it starts again. Join only creates,
never edits a file it did not create: what it refuses is named in the error.

Reset: kubelet stopped (and disabled unless it was enabled before), the pod containers and network
namespaces it made removed, kubelet's mounts under /var/lib/kubelet unmounted, yurthub stopped and removed
with its state, every created path removed, the state removed. The Node object stays in the cloud
(`kubectl delete node <name>`, as after `kubeadm reset`).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from converter import errors, join, jointoken, nodepool, nodestep
from converter.host import Host

log = logging.getLogger(__name__)

STATE = nodestep.JOINED_STATE
STATE_DIR = STATE.rsplit("/", 1)[0]
CA_FILE = nodestep.CA_FILE
HUB_TOKEN = nodestep.HUB_TOKEN
HUB_ENV = nodestep.ENV_FILE
HUB_UNIT = nodestep.UNIT
HUB_STATE = nodestep.HUB_STATE
KUBELET_KUBECONFIG = nodestep.HUB_KUBECONFIG
KUBELET_DIR = "/var/lib/kubelet"
KUBELET_CONFIG = f"{KUBELET_DIR}/config.yaml"
FLAGS_ENV = nodestep.FLAGS_ENV
YURTHUB = f"{nodestep.VENV}/bin/yurthub"
KUBELET_MAKES = ("/var/log/pods", "/var/log/containers", "/usr/libexec/kubernetes", "/etc/kubernetes/manifests")
"""What kubelet creates on its first start outside its state directory (its logs, its volume plugin
directory, its static pod path): removed by reset when they were not there before."""
CTR = ["ctr", "--namespace", "k8s.io"]

TAKEN = (
    nodestep.KUBELET_CONF,
    "/etc/kubernetes/bootstrap-kubelet.conf",
    KUBELET_KUBECONFIG,
    FLAGS_ENV,
    KUBELET_CONFIG,
    f"{KUBELET_DIR}/pki",
    HUB_UNIT,
    "/etc/yurthub",
    HUB_STATE,
)
"""Paths whose presence means a kubelet or yurthub is set up here already: join refuses to start."""

HASH = re.compile(r"sha256:[0-9a-f]{64}")

DEFAULT_KUBELET_CONFIG: dict[str, Any] = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "authentication": {
        "anonymous": {"enabled": False},
        "webhook": {"enabled": True},
        "x509": {"clientCAFile": CA_FILE},
    },
    "authorization": {"mode": "Webhook"},
    "cgroupDriver": "systemd",
    "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock",
    "rotateCertificates": True,
    "staticPodPath": "/etc/kubernetes/manifests",
}
"""kubeadm's defaults, for a cluster without a `kube-system/kubelet-config` ConfigMap."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    server: str
    """The apiserver, https://host:port, as `yurtctl join` printed it."""
    ca_hash: str
    """`sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo."""
    node: str
    """The name this machine registers as."""
    nodepool: str = ""
    """The NodePool it joins (its label at registration); empty: none."""
    hub_args: str = ""
    """Extra yurthub flags for yurthub.env."""
    kubelet_args: str = ""
    """Extra kubelet flags for kubeadm-flags.env (`--node-ip=...`)."""
    timeout_s: float = 300.0
    """How long yurthub may take to get its certificate, and the node to be Ready."""
    interval_s: float = 1.0


def check_hash(text: str) -> str:
    """A well-formed `--ca-cert-hash` (lowercase hex accepted in any case)."""
    value = text.strip().lower()
    if not HASH.fullmatch(value):
        raise errors.PreflightFailed(
            f"--ca-cert-hash {text!r}: expected sha256:<64 hex digits>, as `yurtctl join` prints it"
        )
    return value


def pinned(ca_pem: bytes, want: str) -> bytes:
    """`ca_pem` if its key's hash is `want`; a refusal naming both otherwise (constant-time comparison)."""
    got = join.ca_cert_hash(ca_pem)
    if not hmac.compare_digest(got.encode(), want.encode()):
        raise errors.PreflightFailed(
            f"the server's cluster CA has hash {got}, not the --ca-cert-hash given ({want}): refusing to trust "
            "it (a wrong hash, or not your cluster)"
        )
    return ca_pem


def node_labels(settings: Settings) -> str:
    labels = [f"{nodepool.EDGE_WORKER_LABEL}=true"]
    if settings.nodepool:
        labels.insert(0, f"{nodepool.POOL_LABEL}={settings.nodepool}")
    return ",".join(labels)


def kubelet_flags(settings: Settings) -> str:
    """kubeadm-flags.env: later flags win over the drop-in's, so kubelet knows only yurthub. The yurthub
    flags come last, exactly as `yurtctl node convert` appends them, so the converter sees this kubelet as
    pointed at yurthub already (`nodestep.redirected` leaves it as it is)."""
    args = [f"--hostname-override={settings.node}", f"--node-labels={node_labels(settings)}"]
    if settings.kubelet_args.strip():
        args.append(settings.kubelet_args.strip())
    return f'KUBELET_KUBEADM_ARGS="{" ".join(args)}{nodestep.REDIRECT}"\n'


def kubelet_config(from_cloud: str | None) -> str:
    """The cluster's kubelet configuration when it publishes one (kubeadm's ConfigMap), else kubeadm's defaults."""
    if from_cloud and from_cloud.strip():
        return from_cloud if from_cloud.endswith("\n") else from_cloud + "\n"
    return json.dumps(DEFAULT_KUBELET_CONFIG, indent=2) + "\n"


def hub_env(settings: Settings) -> str:
    return nodestep.hub_env(nodestep.Settings(node=settings.node, hub_args=settings.hub_args), settings.server, True)


# --- discovery: the only code that talks to the cloud before yurthub runs ---------------------------------


class Discovery:
    """The cloud as the machine sees it before joining: TLS to `server`, trusted only once pinned."""

    def __init__(self, server: str, ca_hash: str, *, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise errors.PreflightFailed(f"--server {server!r}: expected https://host:port")
        self.server = server.rstrip("/")
        self.ca_hash = check_hash(ca_hash)
        self.timeout_s = timeout_s
        self._context: ssl.SSLContext | None = None

    def _get(self, path: str, context: ssl.SSLContext, token: str = "") -> tuple[int, bytes]:
        headers = {"Accept": "application/json", "User-Agent": "yurtctl-node-join"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.server + path, headers=headers)  # noqa: S310 - https checked above
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=context) as resp:  # noqa: S310
                return int(resp.status), resp.read(1 << 20)
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (OSError, ValueError) as exc:
            raise errors.Unreachable(f"{self.server}: {getattr(exc, 'reason', exc)}") from exc

    def _cluster_info(self, context: ssl.SSLContext) -> bytes:
        status, body = self._get(join.CLUSTER_INFO, context)
        if status != 200:
            raise errors.PreflightFailed(
                f"{self.server} did not hand out kube-public/cluster-info (HTTP {status}); run `yurtctl join` on "
                "the cloud side first (it publishes it)"
            )
        try:
            return join.cluster_info_ca(json.loads(body))[1]
        except ValueError as exc:
            raise errors.PreflightFailed(f"{self.server}: cluster-info is not JSON") from exc

    def cluster_ca(self) -> bytes:
        """The cluster CA, pinned by the hash and confirmed by a verified TLS connection."""
        blind = ssl.create_default_context()
        blind.check_hostname = False
        blind.verify_mode = ssl.CERT_NONE  # only to read the CA we then check by its hash
        ca = pinned(self._cluster_info(blind), self.ca_hash)
        trusted = ssl.create_default_context(cadata=ca.decode("ascii", errors="replace"))
        again = self._cluster_info(trusted)
        if again != ca:
            raise errors.PreflightFailed(f"{self.server} handed out two different CAs; refusing to trust it")
        self._context = trusted
        return ca

    def kubelet_config(self, token: str) -> str | None:
        """kube-system/kubelet-config's `kubelet` key, read with the token (None: the cluster has none).
        A token the cloud refuses is an error here, before the machine changes."""
        if self._context is None:
            raise errors.PreflightFailed("the cluster CA is not pinned yet")
        status, body = self._get(join.KUBELET_CONFIG, self._context, token)
        if status == 401:
            raise errors.PreflightFailed(
                "the cloud refused the bootstrap token (expired, deleted or mistyped): make a new one with "
                "`yurtctl join` on the cloud side"
            )
        if status == 403:
            raise errors.PreflightFailed(
                "the bootstrap token has no join rights (not made by `yurtctl join`, or its RBAC was removed): "
                "run `yurtctl join` on the cloud side"
            )
        if status == 404:
            return None
        if status != 200:
            raise errors.PreflightFailed(f"reading kube-system/kubelet-config failed (HTTP {status})")
        data = (json.loads(body).get("data") or {}).get("kubelet")
        return str(data) if data else None


# --- the machine's state, for undo ---------------------------------------------------------------------


@dataclasses.dataclass
class State:
    node: str = ""
    created: list[str] = dataclasses.field(default_factory=list)
    """Paths join created (the top-most one that did not exist), in order."""
    kubelet_entries: list[str] | None = None
    """What /var/lib/kubelet held before kubelet first started (None: it has not been started)."""
    kubelet_was_enabled: bool = False
    containers: list[str] = dataclasses.field(default_factory=list)
    """containerd's k8s.io containers before kubelet started (pods' containers are the others)."""
    netns: list[str] = dataclasses.field(default_factory=list)
    hub_installed: bool = False
    done: bool = False

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> State:
        try:
            raw = json.loads(text)
            return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})
        except (ValueError, TypeError) as exc:
            raise errors.NodeStepFailed(f"{STATE} is not join's state: {exc}") from exc


def load_state(host: Host) -> State | None:
    text = host.read(STATE)
    return None if text is None else State.from_json(text)


def _save(host: Host, state: State) -> None:
    host.write(STATE, state.to_json(), 0o600)


def _top_missing(host: Host, path: str) -> str | None:
    """The top-most ancestor of `path` (or `path`) that does not exist; None when `path` exists."""
    if host.exists(path):
        return None
    top = path
    parent = path.rsplit("/", 1)[0]
    while parent and not host.exists(parent):
        top, parent = parent, parent.rsplit("/", 1)[0]
    return top


def _create(host: Host, state: State, path: str, text: str, mode: int) -> None:
    """Write a new file, recording what it creates before creating it (so undo finds it even after a crash)."""
    top = _top_missing(host, path)
    if top is not None and top not in state.created:
        state.created.append(top)
        _save(host, state)
    host.write(path, text, mode)


def _lines(host: Host, argv: list[str]) -> list[str]:
    rc, out = host.run(argv, 30)
    return [line.strip() for line in out.splitlines() if line.strip()] if rc == 0 else []


Fetch = nodestep.Fetch


def _ready_through_hub(fetch: Fetch, node: str) -> bool:
    status, body = fetch(f"{nodestep.PROXY}/api/v1/nodes/{node}")
    if status != 200:
        return False
    conditions = json.loads(body).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _wait(what: str, check: Callable[[], bool], settings: Settings) -> None:
    nodestep.wait_until(what, check, settings.timeout_s, settings.interval_s)


def _must(host: Host, argv: list[str]) -> None:
    rc, out = host.run(argv, 90)
    if rc != 0:
        raise errors.NodeStepFailed(f"`{' '.join(argv)}` failed ({rc}): {out[-500:]}")


def preflight(host: Host, settings: Settings) -> None:
    """Refuse, naming why, before anything changes."""
    if not host.exists(YURTHUB):
        raise errors.PreflightFailed(
            f"{YURTHUB} not found: unpack yurt-edge's executable (make dist's tarball) into {nodestep.VENV} first"
        )
    rc, unit = host.run(["systemctl", "cat", "kubelet.service"], 30)
    if rc != 0 or "kubeadm-flags.env" not in unit:
        raise errors.PreflightFailed(
            "kubelet.service with kubeadm's drop-in (reading /var/lib/kubelet/kubeadm-flags.env) not found: "
            "install the kubelet and kubeadm packages"
        )
    found = [p for p in TAKEN if host.exists(p)]
    if found:
        raise errors.PreflightFailed(
            f"this machine already has a kubelet or yurthub set up ({', '.join(found)}): it is a node already; "
            "`yurtctl node reset` (or `kubeadm reset`) first"
        )
    if host.run(["systemctl", "is-active", "--quiet", "kubelet.service"], 30)[0] == 0:
        raise errors.PreflightFailed("kubelet.service is running already: stop it, or reset this machine first")
    taken = [f"127.0.0.1:{p} ({what})" for p, what in sorted(nodestep.HUB_PORTS.items()) if not host.port_free(p)]
    if taken:
        raise errors.PreflightFailed(f"ports already in use by something else: {', '.join(taken)}")
    if jointoken.in_flags(settings.hub_args):
        raise errors.PreflightFailed("--hub-args carries --join-token, which puts the token on the process list")
    ca = host.read(CA_FILE)
    if ca is not None and join.ca_cert_hash(ca.encode()) != settings.ca_hash:
        raise errors.PreflightFailed(f"{CA_FILE} holds another CA than the pinned one; remove it or reset first")


def install_hub(host: Host, fetch: Fetch, state: State, settings: Settings, token: str, ca: bytes) -> None:
    if host.read(CA_FILE) is None:
        _create(host, state, CA_FILE, ca.decode(), 0o644)
    for path in ("/etc/yurthub", HUB_STATE):
        top = _top_missing(host, path)
        if top is not None and top not in state.created:
            state.created.append(top)
    state.hub_installed = True
    _save(host, state)
    _create(host, state, HUB_TOKEN, token + "\n", 0o600)
    _create(host, state, HUB_ENV, hub_env(settings), 0o600)
    _create(host, state, HUB_UNIT, nodestep.UNIT_TEXT, 0o644)
    _must(host, ["systemctl", "daemon-reload"])
    _must(host, ["systemctl", "enable", "--now", "yurthub.service"])
    _wait(
        "yurthub did not get its node certificate with the token and serve (journalctl -u yurthub says why)",
        lambda: fetch(nodestep.HEALTHZ)[0] == 200,
        settings,
    )
    log.info("yurthub serving node=%s", settings.node)


def start_kubelet(host: Host, fetch: Fetch, state: State, settings: Settings, kubelet_conf: str | None) -> None:
    _create(host, state, KUBELET_KUBECONFIG, nodestep.HUB_KUBECONFIG_TEXT, 0o600)
    _create(host, state, KUBELET_CONFIG, kubelet_config(kubelet_conf), 0o644)
    _create(host, state, FLAGS_ENV, kubelet_flags(settings), 0o644)
    state.kubelet_was_enabled = host.run(["systemctl", "is-enabled", "--quiet", "kubelet.service"], 30)[0] == 0
    state.kubelet_entries = _lines(host, ["ls", "-A", KUBELET_DIR])
    state.containers = _lines(host, [*CTR, "containers", "list", "--quiet"])
    state.netns = _lines(host, ["ls", "-A", "/run/netns"])
    for path in KUBELET_MAKES:
        top = _top_missing(host, path)
        if top is not None and top not in state.created:
            state.created.append(top)
    _save(host, state)
    _must(host, ["systemctl", "daemon-reload"])
    _must(host, ["systemctl", "enable", "kubelet.service"])
    _must(host, ["systemctl", "start", "kubelet.service"])
    _wait(
        "kubelet did not register a Ready node through yurthub (journalctl -u kubelet says why)",
        lambda: nodestep.kubelet_forwarded(fetch(nodestep.METRICS)[1]) > 0 and _ready_through_hub(fetch, settings.node),
        settings,
    )
    log.info("node registered and Ready through yurthub node=%s", settings.node)


def run_join(host: Host, fetch: Fetch, discovery: Discovery, settings: Settings, token: str) -> None:
    """The whole join; on any failure after the first change, everything done is undone."""
    previous = load_state(host)
    if previous is not None and previous.done:
        if previous.node != settings.node:
            raise errors.PreflightFailed(
                f"this machine joined as {previous.node} already; `yurtctl node reset` first to join as {settings.node}"
            )
        log.info("already joined node=%s; checking it", settings.node)
        _wait(
            "the joined node is not Ready through yurthub", lambda: _ready_through_hub(fetch, settings.node), settings
        )
        return
    if previous is not None:
        log.warning("an earlier join stopped halfway node=%s; undoing it first", previous.node)
        undo(host, previous)
    settings = dataclasses.replace(settings, ca_hash=check_hash(settings.ca_hash))
    preflight(host, settings)
    ca = discovery.cluster_ca()
    kubelet_conf = discovery.kubelet_config(token)
    state = State(node=settings.node)
    top = _top_missing(host, STATE_DIR)
    if top is not None:
        state.created.append(top)
    _save(host, state)
    try:
        install_hub(host, fetch, state, settings, token, ca)
        start_kubelet(host, fetch, state, settings, kubelet_conf)
    except errors.ConverterError as exc:
        log.error("join failed node=%s error=%s; undoing it", settings.node, exc)
        try:
            undo(host, state)
        except errors.ConverterError as again:
            raise errors.NodeStepFailed(f"{exc}; undoing it failed too: {again}") from again
        raise errors.NodeStepFailed(f"{exc}; the machine is as it was before the join") from exc
    state.done = True
    _save(host, state)


def _stop_pods(host: Host, state: State) -> None:
    """Remove the pod containers and network namespaces kubelet made, and unmount its volumes."""
    for cid in _lines(host, [*CTR, "containers", "list", "--quiet"]):
        if cid in state.containers:
            continue
        host.run([*CTR, "tasks", "kill", "--signal", "SIGKILL", cid], 30)
        host.run([*CTR, "tasks", "delete", "--force", cid], 30)
        host.run([*CTR, "containers", "delete", cid], 30)
    for name in _lines(host, ["ls", "-A", "/run/netns"]):
        if name not in state.netns and name.startswith("cni-"):
            host.run(["ip", "netns", "delete", name], 30)
    mounts = _lines(host, ["findmnt", "--raw", "--noheadings", "--output", "TARGET"])
    below = sorted({m for m in mounts if m.startswith(KUBELET_DIR + "/")}, key=len, reverse=True)
    for target in below:
        if host.run(["umount", target], 30)[0] != 0:
            host.run(["umount", "--lazy", target], 30)


def undo(host: Host, state: State) -> None:
    """Take the machine back to before the join `state` records (join's rollback and `node reset`)."""
    if state.kubelet_entries is not None:
        stop = ["stop"] if state.kubelet_was_enabled else ["disable", "--now"]  # enabled before: leave it so
        host.run(["systemctl", *stop, "kubelet.service"], 90)
        _stop_pods(host, state)
        for entry in _lines(host, ["ls", "-A", KUBELET_DIR]):
            if entry not in state.kubelet_entries:
                host.remove(f"{KUBELET_DIR}/{entry}")
    if state.hub_installed or host.exists(HUB_UNIT):
        nodestep.remove_hub(host)
    for path in reversed(state.created):
        host.remove(path)
    host.remove(STATE_DIR)
    host.run(["systemctl", "daemon-reload"], 90)
    host.run(["systemctl", "reset-failed", "kubelet.service"], 30)
    log.info("machine reset node=%s", state.node)


def reset(host: Host) -> str:
    """`yurtctl node reset`: undo the recorded join; a message for the operator."""
    state = load_state(host)
    if state is None:
        return "nothing to reset: this machine was not joined by `yurtctl node join`"
    undo(host, state)
    return f"machine reset; node {state.node} stays in the cloud until deleted there (kubectl delete node {state.node})"


def default_node_name() -> str:
    return socket.gethostname().lower()
