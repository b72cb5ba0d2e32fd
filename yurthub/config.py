"""yurthub settings: one frozen dataclass per concern, built once by `cli` and passed down.

Flags mean what OpenYurt's yurthub flags of the same name mean, so an operator's muscle memory carries over.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import stat
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting an operator gave cannot work; the message says which and why."""


class LoadBalancingMode(enum.StrEnum):
    """How requests spread over several healthy cloud servers."""

    ROUND_ROBIN = "rr"
    PRIORITY = "priority"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CloudSettings:
    servers: tuple[str, ...]
    """kube-apiserver URLs (https://host:port), in priority order."""
    lb_mode: LoadBalancingMode = LoadBalancingMode.ROUND_ROBIN
    """Spread over healthy servers in turn, or always use the first healthy one."""
    heartbeat_interval_s: float = 10.0
    """Seconds between health probes of each server."""
    heartbeat_timeout_s: float = 2.0
    """Seconds one probe may take before it counts as a failure."""
    heartbeat_failed_retry: int = 3
    """Failed probes in a row that mark a healthy server unhealthy."""
    heartbeat_healthy_threshold: int = 2
    """Successful probes in a row that mark an unhealthy server healthy again."""
    request_timeout_s: float = 30.0
    """Longest silence while waiting for a non-watch response; past it that request gets a 504 `Status`. Only
    probes and connection failures change cloud health: one slow request never takes the node offline."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ListenSettings:
    bind_address: str = "127.0.0.1"
    """Address of the plain proxy port and the serve port."""
    proxy_port: int = 10261
    """Plain HTTP proxy port that kubelet and other node components use."""
    serve_port: int = 10267
    """Health, readiness and metrics port."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheSettings:
    disk_cache_path: str = "/var/lib/yurthub/cache"
    """Directory of the on-disk cache; it survives restarts and reboots."""
    cache_agents: tuple[str, ...] = ("kubelet", "kube-proxy", "coredns", "flanneld", "yurt-tunnel-agent")
    """Client components (User-Agent product names) whose responses are cached; `*` caches every client."""


class ClientSource(enum.StrEnum):
    """Where the node client certificate comes from."""

    CSR = "csr"
    """yurthub's own, obtained and rotated by CertificateSigningRequest (bootstrap token, then itself)."""
    KUBELET = "kubelet"
    """The kubelet's current client certificate, followed as kubelet rotates it."""
    FILE = "file"
    """A certificate file someone else provides and rotates."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentitySettings:
    ca_file: str
    """CA bundle that signed the kube-apiserver's serving certificate."""
    client_cert: str
    """Node client certificate (PEM); may also hold the key, as kubelet's `kubelet-client-current.pem` does.
    Ignored when a bootstrap token is given: yurthub then keeps its own under `root_dir`."""
    client_key: str = ""
    """Key of the client certificate, when it is not in the same file."""
    bootstrap_token: str = dataclasses.field(default="", repr=False)
    """Bootstrap token (`<id>.<secret>`) to ask for a client certificate with, as `kubeadm join` does;
    from `--join-token` (discouraged: visible in the process list) or the user of `--bootstrap-file`.
    Empty, with no `bootstrap_token_file` either: no CSR, use `client_cert`."""
    bootstrap_token_file: str = ""
    """File holding the bootstrap token (`--join-token-file`, the way to pass it): owner-only (0600 or
    stricter), read again when it changes, so a token replaced before it expires is picked up."""
    root_dir: str = "/var/lib/yurthub"
    """yurthub's own certificates live in `<root_dir>/pki` (root-only)."""
    serving_cert: bool = True
    """Ask for a serving certificate (kubelet-serving signer) for the HTTPS door."""
    serving_ip_addresses: tuple[str, ...] = ("169.254.2.1",)
    """IP SANs of the serving certificate besides the node IP: the door's address, where pods reach it."""
    node_ip: str = ""
    """The node's IP (a serving SAN); empty: the address this node reaches the first cloud server from."""
    csr_poll_s: float = 2.0
    """Seconds between looks at a pending CertificateSigningRequest."""

    @property
    def client_source(self) -> ClientSource:
        if self.bootstrap_token or self.bootstrap_token_file:
            return ClientSource.CSR
        if self.client_cert.endswith("/kubelet-client-current.pem"):
            return ClientSource.KUBELET
        return ClientSource.FILE

    @property
    def client_file(self) -> str:
        """The combined PEM file of the client certificate yurthub uses (its own in CSR mode)."""
        if self.client_source is ClientSource.CSR:
            return f"{self.root_dir}/pki/yurthub-client-current.pem"
        return self.client_cert

    @property
    def serving_file(self) -> str:
        """The combined PEM (certificate, then key) the HTTPS door serves with; replaced atomically."""
        return f"{self.root_dir}/pki/yurthub-server-current.pem"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutboxSettings:
    path: str = "/var/lib/yurthub/outbox"
    """Directory of the durable outbox for writes made while the cloud is away."""
    capacity: int = 1000
    """Writes kept at most; past it the oldest is dropped and counted."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class FilterSettings:
    """Response filters (`filters`): which component gets which filter on which resource."""

    enabled: bool = True
    """Filter responses at all; off, every response passes through unchanged."""
    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(filter, `component/resource` targets) for every filter that is on; built by `filters.parse_rules`."""
    nodepool_label: str = "apps.openyurt.io/nodepool"
    """Node label whose value names the node's pool, for `servicetopology`."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoorSettings:
    """The HTTPS door for pods: TLS on a node-local address, pods' own bearer tokens forwarded."""

    cert_file: str = ""
    """Serving certificate (PEM, may include the key); empty keeps the door shut. Reloaded when it changes."""
    key_file: str = ""
    """Its key, when in a file of its own."""
    address: str = "169.254.2.1"
    """Address the door listens on and the `masterservice` filter points the `kubernetes` Service at."""
    port: int = 10268
    """The door's TCP port."""
    manage_interface: bool = True
    """Create `interface` with `address` at start and remove it at stop; off, `address` must exist already."""
    interface: str = "yurthub0"
    """Name of the dummy interface yurthub creates (at most 15 characters)."""
    tls_ciphers: str = ""
    """OpenSSL cipher string for the door (e.g. `DEFAULT:@SECLEVEL=1`); empty keeps OpenSSL's defaults."""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """Bounds on what any client can make yurthub hold: a pod reaches the door with any token and any local
    process reaches the plain port, and none of them may grow yurthub's memory or disk without bound."""

    max_request_body: int = 16 * MIB
    """Largest request body on the plain port (413 past it). Node components send at most a few MiB (a Node
    status with many images); 16 MiB leaves room without letting one request hold much memory."""
    max_door_request_body: int = 3 * MIB
    """Largest request body on the HTTPS door. kube-apiserver itself refuses bodies over 3 MiB
    (`--max-request-bytes`), so a pod never needs more, and a pod is less trusted than a node component."""
    max_bytes_in_memory: int = 256 * MIB
    """Request bodies and whole responses (filtered answers, offline answers) held in memory at once, node
    wide. Past it a request is answered 429 with `Retry-After`: a flood slows its senders, not yurthub's host.
    256 MiB is four of the largest lists an edge node sees at once (kubelet and kube-proxy at start)."""
    max_list_buffer_bytes: int = 256 * MIB
    """List bodies buffered for the cache at once, node wide (a single list is kept up to 64 MiB). Past it
    a list is relayed but not cached this time; the next relist caches it."""
    retry_after_s: int = 1
    """`Retry-After` seconds of a 429: client-go waits that long and retries."""
    max_list_digests: int = 4096
    """Lists remembered by digest so an unchanged relist is not written again (least recently used goes
    first). A few thousand covers every view a full node keeps; a digest costs ~100 bytes."""
    max_views_per_scope: int = 256
    """List views kept per (component, encoding, resource) in the cache (least recently used goes first):
    kubelet keeps one per ConfigMap and Secret its pods mount, over a hundred on a full node."""
    token_scope_idle_s: float = 24 * 3600.0
    """A pod token's cache scope unused this long is removed. Kubelet refreshes projected tokens hourly and
    Kubernetes caps a bound token's lifetime at 24 h unless an operator raised it, so a scope idle a day
    belongs to a token that no longer works. Counted only while the cloud is reachable (`server.sweep_once`)."""
    sweep_interval_s: float = 300.0
    """How often idle token scopes are looked for."""
    max_inflight_pod: int = 32
    """Non-watch requests in flight at once from the HTTPS door (pods), past it 429 with `Retry-After`
    (`fairness`). A node runs a few dozen pods and few of them talk to the API more than now and then; 32 lets
    every ordinary pod through while a flood from a few pods cannot occupy yurthub's two cores and the cloud
    connection the node's own components need."""
    max_inflight_other: int = 16
    """Non-watch requests in flight at once on the plain port from clients that are not cache agents (or carry
    their own token). Such local processes are rare on an edge node (an operator's kubectl, a monitoring
    agent); 16 is room for them, and keeps a rogue local process from crowding out kubelet. Node components
    (cache agents without their own token, from a process of one of `node_uids`) are never limited."""
    max_inflight_per_pod: int = 8
    """Of the door's `max_inflight_pod`, how many one client may hold at once: one source address (a pod),
    and one token, each (`fairness`). So one pod, or one token, cannot take every seat of the class and
    starve the other pods: past its share it gets 429 with `Retry-After` while other pods still get in.
    client-go retries a 429 after its `Retry-After`, so a pod starting many informers at once waits a moment
    instead of failing. Pods with the host's network share the node's address, and so one share."""
    max_concurrent_non_node: int = 8
    """Of the admitted `pod` and `other` requests (the two limits above), how many are served at once, node
    wide; the rest wait their turn in arrival order (`fairness`). The node's own components never wait and
    are not counted. yurthub serves every request on one event loop, so this bounds how many pod and other
    requests a kubelet request shares it with; 8 keeps a few pods' ordinary calls flowing (a pod's request
    through yurthub takes milliseconds) while a flood waits in the queue, where it costs nothing."""
    max_queue_wait_s: float = 15.0
    """How long a `pod` or `other` request waits for its turn before it is answered 429 with `Retry-After`.
    kube-apiserver's API Priority and Fairness lets a request wait up to a quarter of its 60 s timeout, 15 s."""
    node_uids: frozenset[int] = dataclasses.field(default_factory=lambda: frozenset({0, os.geteuid()}))
    """Users whose processes are the node's own components on the plain port (`peers`): a cache agent's
    request without an `Authorization` of its own is the node's (the never-limited `node` class, and the
    offline writes only kubelet may make) only when the kernel says the client's socket belongs to one of
    these uids. Any local process can name itself kubelet; only these users' processes are believed.
    Default: root (kubelet, kube-proxy and the CNI run as root) and the user yurthub runs as."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class HubSettings:
    node_name: str
    """The node this yurthub serves; its identity towards the cloud."""
    cloud: CloudSettings
    listen: ListenSettings
    cache: CacheSettings
    identity: IdentitySettings
    outbox: OutboxSettings
    filters: FilterSettings = FilterSettings()
    door: DoorSettings = DoorSettings()
    limits: LimitSettings = LimitSettings()


def parse_servers(value: str) -> tuple[str, ...]:
    """Split a comma-separated `--server-addr` value and check every entry is an https URL with a host."""
    servers = tuple(s.strip() for s in value.split(",") if s.strip())
    if not servers:
        raise ConfigError("--server-addr: give at least one kube-apiserver URL, e.g. https://10.0.0.1:6443")
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"--server-addr: {server!r} is not an https://host[:port] URL")
        if parts.path not in ("", "/"):
            raise ConfigError(f"--server-addr: {server!r} must not carry a path")
    return servers


def parse_uids(value: str) -> frozenset[int] | None:
    """The uids of a comma-separated `--node-uids` value; None for an empty one (the default applies)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        return None
    uids = set()
    for part in parts:
        if not (part.isascii() and part.isdigit()) or int(part) > 0xFFFFFFFE:
            raise ConfigError(f"--node-uids: {part!r} is not a numeric user id (e.g. --node-uids=0,998)")
        uids.add(int(part))
    return frozenset(uids)


BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
"""The shape of a Kubernetes bootstrap token, `<token-id>.<token-secret>`."""
TOKEN_FILE_MAX = 4096
"""A token file longer than this is not a token file."""


def parse_bootstrap_token(text: str, source: str) -> str:
    """The bootstrap token in `text` (surrounding whitespace and one trailing newline allowed); `source`
    names where it came from in the error, which never repeats the text itself."""
    token = text.strip()
    if not token:
        raise ConfigError(f"{source}: empty; expected a bootstrap token <6 characters>.<16 characters>")
    if not BOOTSTRAP_TOKEN.fullmatch(token):
        raise ConfigError(f"{source}: expected a bootstrap token <6 characters>.<16 characters> of [a-z0-9]")
    return token


def read_token_file(path: str) -> tuple[str, tuple[int, int, int]]:
    """Read and check a bootstrap token file (blocking: call it off the event loop); returns the token and
    the file's (inode, mtime, size) mark, so a caller can skip reading again while the mark is unchanged.

    Refused: a missing or unreadable file, one other users could read or write (mode & 0o077), an empty one,
    one that does not hold exactly one bootstrap token."""
    source = f"--join-token-file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{source}: mode {stat.S_IMODE(st.st_mode):04o} lets other users read or change the token; "
                f"make it owner-only (chmod 600 {path})"
            )
        data = os.read(fd, TOKEN_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > TOKEN_FILE_MAX:
        raise ConfigError(f"{source}: longer than {TOKEN_FILE_MAX} bytes; expected one bootstrap token")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not text; expected one bootstrap token") from None
    return parse_bootstrap_token(text, source), (st.st_ino, st.st_mtime_ns, st.st_size)


def check_port(flag: str, port: int) -> int:
    if not 0 < port < 65536:
        raise ConfigError(f"{flag}: {port} is not a TCP port (1-65535)")
    return port
