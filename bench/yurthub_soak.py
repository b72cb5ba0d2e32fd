"""Hostile soak of yurthub: what any local process (the plain port) and any pod (the HTTPS door, with any
token) can make it hold, and whether a kubelet-shaped client notices.

A pod can reach the door with any token and any local process can reach the plain port; neither may grow
yurthub's memory or disk without bound or slow other clients. The soak drives both with random API paths
(random resources, namespaces, names, and label/field selectors so that most lists define a new view, many
of them matching every object), random verbs (GET, LIST, WATCH with a one-second timeout, and POST, PUT,
PATCH, DELETE with random bodies of random sizes, a few of exactly the largest size yurthub accepts and a
few just past it), random User-Agents (kubelet-like ones, which yurthub caches for the node's own processes
only, and made-up components) and, on the door, valid ServiceAccount tokens (each its own cache scope, so
the door's lists fill the cache) mixed with random ones.

Phases alternate, quiet then soak, ending quiet (`reps` soak phases, `reps + 1` quiet ones). Throughout every
phase a kubelet-shaped client GETs its Node and a Pod on one kept-alive connection at a steady rate, and the
same GETs, interleaved, straight at the kube-apiserver on a kept-alive connection of their own (the node's
client certificate): everything here shares one machine, the apiserver and etcd included, and the hostile
requests are forwarded to that same apiserver, so the direct GETs show what the machine and the apiserver add
under the soak, and through minus direct is yurthub's part. Both latencies are reported per phase (p50/p99
with the sample count, and their differences), and as medians over the phases of a kind with the min and max
kept; so is the share of each phase yurthub's event-loop thread ran on a CPU and waited on a run queue.
`--profile FILE` samples yurthub with py-spy (Python and native frames, every thread) during the first soak
phase, for where a kubelet request waits; it pauses yurthub per sample, so that run's latencies are not the
figures of record. yurthub's RSS (VmRSS) and the size of its cache directory (every file, SQLite WAL
included) are sampled before the soak, after each quarter of every soak phase, and after the last quiet
phase: a curve that levels off is what bounded state looks like; one that climbs by the same step every
quarter is growth without bound. The number of Prometheus samples on /metrics is counted before and after.

The hostile load runs in a process of its own so that its CPU use does not slow the measuring client's
interpreter (the GIL) and pass for yurthub's latency. It is "any local process": when the bench runs as root,
that process drops to `nobody` (`HOSTILE_UID`) once it has loaded the CA (`become_hostile`), so its
requests naming kubelet or kube-proxy are what an unprivileged process gets (`--node-uids`: not the node's
class), while the measuring kubelet-shaped client stays root's; the uid it ran as is in the result
(`hostile_process_uids`). Every request goes to 127.0.0.1: the plain port, and
the door bound to 127.0.0.1 (no interface of its own). Each soak phase is bounded by a request count and a
wall-clock cap, whichever comes first.

Run the soak alone (its own control plane, a few minutes; nothing is written under bench/results):

    python -m bench.yurthub_soak [--requests N] [--reps R] [--quiet-s S] [--phase-cap-s S] [--out FILE]
        [--hub-arg=--FLAG=VALUE ...] [--profile FILE] [--reserved-cpu]

`--reserved-cpu` runs it as on a node whose kubelet keeps a CPU for the system daemons (`reservedSystemCPUs`)
and whose cloud is another machine: yurthub and the kubelet-shaped client on the machine's last CPU, everything
else (the control plane, the hostile process, the bench) on the others. It tells what yurthub's own handling
of the hostile load adds from what sharing two cores with the control plane and the hostile process adds;
`make bench` runs both layouts (`bench.yurthub_bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import http.client
import json
import multiprocessing
import os
import random
import shutil
import signal
import ssl
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from testenv import cluster, controlplane, hosthub
from testenv.kubectl import wait_for
from yurthub import config

NODE = "soak-node"
NAMESPACE = "soak"
POD = "kubelet-pod"
KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/soak"
PB = "application/vnd.kubernetes.protobuf"
CONFIGMAPS = 200
PODS = 50
VALID_TOKENS = 16
KUBELET_RATE = 20.0
"""Requests per second of the kubelet-shaped client (alternating its Node and its Pod)."""
WORKERS = 16
"""Concurrent hostile clients."""
FULL_BODIES = 1
"""Requests per quarter with a body of exactly the largest size yurthub accepts (and as many one byte past)."""
MAX_RANDOM_BODY = 3 * 1024 * 1024
"""Largest of the other random bodies (one in ten is between 64 KiB and this)."""
RESOURCES = ("pods", "configmaps", "services", "secrets", "endpoints", "events", "serviceaccounts")
WRITE_TYPES = (
    "application/json",
    PB,
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/octet-stream",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """How much hostile load, and how long the quiet phases between."""

    requests: int = 10_000
    """Hostile requests per soak phase (split in four quarters); about 35 s of load on a 2-core machine, so
    that the kubelet-shaped client takes about 700 samples during each soak phase."""
    reps: int = 3
    """Soak phases; there is one quiet phase before each and one after the last."""
    quiet_s: float = 15.0
    """Length of a quiet phase: at KUBELET_RATE, 300 samples for its p99."""
    phase_cap_s: float = 60.0
    """Wall-clock cap on one soak phase, whatever its count."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the hostile process sends its load, and with what."""

    plain: str
    door: str
    ca_file: str
    tokens: tuple[str, ...]
    largest: int
    """The largest request body yurthub accepts."""


@dataclasses.dataclass(frozen=True)
class Request:
    door: bool
    method: str
    path: str
    headers: dict[str, str]
    body_size: int
    """Bytes of body, taken from a pool of random bytes."""


# --- the hostile requests: pure, from a seeded random.Random ----------------------------------------------


def _word(rng: random.Random, n: int = 8) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def _selector(rng: random.Random) -> dict[str, str]:
    """A selector no client used before; most match every object, so the new view holds the whole list."""
    w = _word(rng)
    return rng.choice(
        [
            {"labelSelector": f"app={w}"},
            {"labelSelector": f"soak notin ({w})"},
            {"labelSelector": f"k{w}!=x"},
            {"fieldSelector": f"metadata.name!={w}"},
            {"labelSelector": f"k{w}!=x", "fieldSelector": f"metadata.name!={w}"},
        ]
    )


def _namespace(rng: random.Random) -> str:
    return NAMESPACE if rng.random() < 0.7 else f"ns-{_word(rng)}"


def _user_agent(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.4:
        return f"kubelet/v1.{rng.randint(20, 40)}.0 (linux/amd64) kubernetes/{_word(rng, 6)}"
    if roll < 0.5:
        return f"kube-proxy/v1.34.0 (linux/amd64) kubernetes/{_word(rng, 6)}"
    return f"c{_word(rng)}/{rng.randint(0, 9)}.0 (soak)"


def _body_size(rng: random.Random) -> int:
    if rng.random() < 0.9:
        return rng.randint(0, 64 * 1024)
    return rng.randint(64 * 1024, MAX_RANDOM_BODY)


def plan_request(rng: random.Random, index: int, count: int, largest: int) -> Request:
    """The `index`-th of `count` hostile requests of a quarter; a few carry the largest body (or one more)."""
    door = rng.random() < 0.35
    headers = {"User-Agent": _user_agent(rng), "Accept": rng.choice([PB, "application/json", "*/*"])}
    if index < 2 * FULL_BODIES and count >= 4 * FULL_BODIES:
        size = largest + (index % 2)
        method = rng.choice(["POST", "PUT", "PATCH"])
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps" + ("" if method == "POST" else f"/x{_word(rng)}")
        headers["Content-Type"] = rng.choice(WRITE_TYPES)
        return Request(door, method, path, headers, size)
    ns, resource = _namespace(rng), rng.choice(RESOURCES)
    collection = f"/api/v1/namespaces/{ns}/{resource}"
    kind = rng.choices(["list", "get", "watch", "custom", "nonresource", "bad", "write"], [34, 14, 5, 9, 4, 4, 30])[0]
    size = 0
    if kind == "list":
        method, path = "GET", f"{collection}?{urllib.parse.urlencode(_selector(rng))}"
        if rng.random() < 0.1:
            path = f"/api/v1/nodes?{urllib.parse.urlencode(_selector(rng))}"
    elif kind == "get":
        method, path = "GET", f"{collection}/{_word(rng)}"
    elif kind == "watch":
        query = {**_selector(rng), "watch": "1", "timeoutSeconds": "1", "allowWatchBookmarks": "true"}
        method, path = "GET", f"{collection}?{urllib.parse.urlencode(query)}"
    elif kind == "custom":
        group, plural = f"{_word(rng, 5)}.example.com", f"r{_word(rng)}"
        method = "GET"
        path = f"/apis/{group}/v1/namespaces/{ns}/{plural}?{urllib.parse.urlencode(_selector(rng))}"
    elif kind == "nonresource":
        method, path = "GET", rng.choice(["/version", "/api", "/apis", f"/{_word(rng)}/{_word(rng)}"])
    elif kind == "bad":
        method = "GET"
        path = rng.choice(
            [
                f"{collection}/..%2F{_word(rng)}",
                f"/api/v1/namespaces/../{resource}",
                f"{collection}/{'n' * rng.randint(254, 400)}",
                f"{collection}//{_word(rng)}",
            ]
        )
    else:
        method = rng.choice(["POST", "PUT", "PATCH", "DELETE"])
        path = collection if method == "POST" else f"{collection}/x{_word(rng)}"
        size = _body_size(rng)
        headers["Content-Type"] = rng.choice(WRITE_TYPES)
    return Request(door, method, path, headers, size)


# --- the hostile process ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Driven:
    """What one run of the hostile process saw."""

    counts: dict[str, dict[str, int]]
    """Answers by port (`plain`, `door`) and status (`error:<type>` when the connection failed)."""
    server_errors: list[str]
    """The first few 5xx answers: port, method, path, and the start of the body (never a token)."""
    uid: int
    """The user the hostile process ran as (`HOSTILE_UID` when the bench runs as root)."""


HOSTILE_UID = 65534
"""`nobody`: the hostile process is "any local process", so it is not root (whom yurthub trusts as the node's
own components, `--node-uids`) when the bench can make it someone else."""
_door_tls: ssl.SSLContext | None = None
"""The hostile process's TLS context for the door, built by `become_hostile` before it drops root."""


def become_hostile(target: Target) -> None:
    """The hostile process's start (a `ProcessPoolExecutor` initializer): read what it needs while it may (the
    CA into its TLS context; the tokens are in `target` already), load every module it will use (the
    interpreter and its packages may sit where `nobody` cannot read), then, if it runs as root, become
    `HOSTILE_UID` for good (groups, gid, uid). Nothing after this may read a file only root can."""
    global _door_tls  # noqa: PLW0603 - one per process: this is the process's own start
    _door_tls = ssl.create_default_context(cafile=target.ca_file)
    asyncio.run(_warm_up(target, _door_tls))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(HOSTILE_UID)
        os.setuid(HOSTILE_UID)


async def _warm_up(target: Target, door_tls: ssl.SSLContext) -> None:
    """One harmless request to each port (the plain port's and the door's `/healthz`, no User-Agent, no
    token), so that everything a request loads lazily is loaded before root is dropped."""
    async with aiohttp.ClientSession(skip_auto_headers=("User-Agent",)) as session:
        for base, tls in ((target.plain, True), (target.door, door_tls)):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(base + "/healthz", ssl=tls, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()


def drive(target: Target, count: int, cap_s: float, seed: int) -> Driven:
    """Send `count` hostile requests (or as many as `cap_s` seconds allow) from WORKERS concurrent clients.
    Runs in a process of its own, started by `become_hostile`."""
    return asyncio.run(_drive(target, count, cap_s, seed))


async def _drive(target: Target, count: int, cap_s: float, seed: int) -> Driven:
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    pool = rng.randbytes(max(target.largest + 1, MAX_RANDOM_BODY))
    requests = [plan_request(rng, i, count, target.largest) for i in range(count)]
    rng.shuffle(requests)
    tokens = rng.sample(target.tokens, len(target.tokens))
    door_tls = _door_tls
    assert door_tls is not None, "drive runs in the hostile process, after become_hostile"
    counts: dict[str, collections.Counter[str]] = {"plain": collections.Counter(), "door": collections.Counter()}
    server_errors: list[str] = []
    deadline = time.monotonic() + cap_s
    pending = iter(requests)

    async def one(session: aiohttp.ClientSession, req: Request) -> None:
        headers = dict(req.headers)
        if req.door:
            roll = rng.random()
            if roll < 0.5:
                headers["Authorization"] = f"Bearer {rng.choice(tokens)}"
            elif roll < 0.95:
                headers["Authorization"] = f"Bearer soak.{_word(rng, 40)}"
        base = target.door if req.door else target.plain
        start = rng.randrange(0, len(pool) - req.body_size + 1)
        body = pool[start : start + req.body_size] if req.body_size else None
        url = yarl.URL(base + req.path, encoded=True)
        try:
            async with session.request(
                req.method, url, headers=headers, data=body, ssl=door_tls if req.door else True
            ) as resp:
                answer = await resp.read()
                outcome = str(resp.status)
                if resp.status >= 500 and len(server_errors) < 3:
                    where = "door" if req.door else "plain"
                    server_errors.append(f"{where} {req.method} {req.path[:150]} -> {answer[:200]!r}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = f"error:{type(exc).__name__}"
        counts["door" if req.door else "plain"][outcome] += 1

    async def worker(session: aiohttp.ClientSession) -> None:
        for req in pending:
            if time.monotonic() >= deadline:
                return
            await one(session, req)

    timeout = aiohttp.ClientTimeout(total=20)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(WORKERS)))
    return Driven({port: dict(c) for port, c in counts.items()}, server_errors, os.geteuid())


# --- the kubelet-shaped client ----------------------------------------------------------------------------


class KubeletProbe:
    """GETs of its Node and a Pod at KUBELET_RATE, through yurthub's plain port on one kept-alive connection
    and, interleaved, the same GETs straight at the kube-apiserver on a kept-alive connection of their own
    (the node's client certificate, the one yurthub forwards with), in a thread of its own.

    The direct GETs say what the machine and the apiserver add under load: through minus direct is yurthub's
    part. Each tick sends one GET both ways, back to back, the order alternating from tick to tick so that
    neither way always goes first. Ticks go out on a fixed schedule; one that is late (the previous answers
    were slow) goes at once, and the schedule restarts after a stall longer than a second instead of sending
    a burst."""

    def __init__(self, port: int, direct: Direct, cpus: set[int] | None = None) -> None:
        self.port = port
        self.direct = direct
        self.cpus = cpus
        """The CPUs its thread runs on (kubelet's, beside yurthub, in the reserved layout); None: any."""
        self.latencies_ms: list[float] = []
        """Through yurthub."""
        self.direct_ms: list[float] = []
        """Straight at the kube-apiserver."""
        self.statuses: collections.Counter[str] = collections.Counter()
        self.direct_statuses: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kubelet-probe", daemon=True)

    def __enter__(self) -> KubeletProbe:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _through(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)

    def _straight(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(self.direct.host, self.direct.port, timeout=20, context=self.direct.tls)

    def _run(self) -> None:
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)  # this thread only
        paths = [f"/api/v1/nodes/{NODE}", f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}"]
        # kubelet's own Accept: yurthub negotiates its pods as JSON, so a protobuf-only probe would measure 406s
        headers = {"Accept": f"{PB},application/json", "User-Agent": KUBELET}
        ways = [
            _Way(self._through, self.latencies_ms, self.statuses),
            _Way(self._straight, self.direct_ms, self.direct_statuses),
        ]
        for way in ways:
            way.get(paths[0], headers)  # connect once before measuring
        due, i = time.perf_counter(), 0
        while not self.stopping.is_set():
            now = time.perf_counter()
            if now < due:
                self.stopping.wait(due - now)
                continue
            for way in ways if i % 2 == 0 else ways[::-1]:
                start = time.perf_counter()
                if way.get(paths[(i // 2) % 2], headers):
                    way.latencies.append((time.perf_counter() - start) * 1000)
            i += 1
            due += 1 / KUBELET_RATE
            if due < time.perf_counter() - 1:
                due = time.perf_counter()
        for way in ways:
            way.conn.close()


@dataclasses.dataclass(frozen=True)
class Direct:
    """Where the kubelet-shaped client reaches the kube-apiserver itself, and its TLS (the node's certificate)."""

    host: str
    port: int
    tls: ssl.SSLContext


class _Way:
    """One of the probe's two kept-alive connections, reopened after a failure."""

    def __init__(
        self,
        connect: Callable[[], http.client.HTTPConnection],
        latencies: list[float],
        statuses: collections.Counter[str],
    ) -> None:
        self.connect = connect
        self.conn = connect()
        self.latencies = latencies
        self.statuses = statuses

    def get(self, path: str, headers: dict[str, str]) -> bool:
        """One GET, its whole answer read; False (counted as an error, connection reopened) when it failed."""
        try:
            self.conn.request("GET", path, headers=headers)
            resp = self.conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.statuses[f"error:{type(exc).__name__}"] += 1
            self.conn.close()
            self.conn = self.connect()
            return False
        self.statuses[str(resp.status)] += 1
        return True


# --- measuring yurthub from outside -----------------------------------------------------------------------


def cpu_s(pid: int) -> tuple[float, float, float]:
    """Seconds `pid`'s main thread (yurthub's event loop) ran on a CPU, of the whole process, and that the main
    thread waited on a run queue (runnable, not running: the machine's other processes had the cores)."""

    def of(stat: str) -> float:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    run_delay_ns = int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1])
    return of(f"/proc/{pid}/task/{pid}/stat"), of(f"/proc/{pid}/stat"), run_delay_ns / 1e9


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def dir_mb(path: Path) -> float:
    """Bytes of every file under `path` (the SQLite database, its WAL and shared memory, anything else)."""
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:  # a WAL checkpointed away while we walk
            pass
    return round(total / 2**20, 2)


def metric_series(hub: hosthub.HostHub) -> int:
    return sum(1 for line in hub.metrics().splitlines() if line and not line.startswith("#"))


def log_errors(log: Path) -> dict[str, Any]:
    """How many ERROR lines yurthub logged, and the first few distinct ones (cut short)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    first: list[str] = []
    for line in lines:
        message = line.split(" ERROR ", 1)[1][:200]
        if message not in first and len(first) < 5:
            first.append(message)
    return {"count": len(lines), "first": first}


def largest_body() -> int:
    """The largest request body yurthub accepts on its plain port by default (`config.LimitSettings`)."""
    return config.LimitSettings().max_request_body


# --- the cluster side -------------------------------------------------------------------------------------


def prepare(kube: cluster.Cluster) -> tuple[str, ...]:
    """The soak's namespace and objects, node rights to read them, and ServiceAccount tokens for the door."""
    kube.kubectl.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": NAMESPACE}},
            # the pods' account, made here rather than waited for from the controller-manager
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NAMESPACE}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "soak-node-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "reader-view", "namespace": NAMESPACE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NAMESPACE}],
            },
        ]
    )
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm{i}", "namespace": NAMESPACE, "labels": {"app": "soak"}},
            "data": {"key": f"value-{i}-" + "x" * 1000},
        }
        for i in range(CONFIGMAPS)
    ]
    objects += [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD if i == 0 else f"p{i}", "namespace": NAMESPACE, "labels": {"app": "soak"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "soak", "command": ["sleep", "1"]}]},
        }
        for i in range(PODS)
    ]
    # created, not applied (apply would add its annotation, a copy of each object); a second soak on the same
    # cluster (the reserved layout) finds them there
    present = set(kube.kubectl.run("get", "configmaps,pods", "-n", NAMESPACE, "-o", "name").split())
    missing = [o for o in objects if f"{o['kind'].lower()}/{o['metadata']['name']}" not in present]
    if missing:
        kube.kubectl.run("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": missing}))
    wait_for("the view role's rules", lambda: bool(kube.kubectl.get("clusterrole", "view").get("rules")), timeout=60)
    return tuple(
        kube.kubectl.run("create", "token", "reader", "-n", NAMESPACE, "--duration=1h").strip()
        for _ in range(VALID_TOKENS)
    )


def start_hub(kube: cluster.Cluster, directory: Path, *extra: str) -> tuple[hosthub.HostHub, int]:
    """yurthub for NODE with its door on 127.0.0.1 (no interface of its own), default cache agents; `extra`
    flags last (to compare a setting with its default)."""
    plane = kube.plane
    assert plane is not None
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = plane.ca.issue("yurthub-door", server=True, ip_addresses=("127.0.0.1",)).write(directory, "door")
    door_port = controlplane.free_port()
    hub = hosthub.start(
        plane,
        plane.server,
        NODE,
        directory,
        f"--secure-cert-file={cert}",
        f"--secure-key-file={key}",
        "--no-enable-dummy-if",
        "--dummy-if-ip=127.0.0.1",
        f"--proxy-secure-port={door_port}",
        *extra,
    )
    return hub, door_port


def _threads() -> Iterator[tuple[int, int]]:
    """(pid, tid) of every thread on the machine that can still be listed (processes end meanwhile)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield from ((int(entry.name), int(task.name)) for task in (entry / "task").iterdir())


def _pin_all(cpus: set[int], hub_pid: int, hub_cpus: set[int]) -> dict[int, set[int]]:
    """Every thread of every process on `cpus`, yurthub's on `hub_cpus`; what each ran on before. Kernel
    threads refuse (skipped), as do threads gone meanwhile."""
    before: dict[int, set[int]] = {}
    for pid, tid in _threads():
        with contextlib.suppress(OSError):
            was = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, hub_cpus if pid == hub_pid else cpus)
            before[tid] = was
    return before


def _unpin_all(before: dict[int, set[int]], everywhere: set[int]) -> None:
    """Every thread back on what it ran on before `_pin_all`; one started since, on every CPU."""
    for _, tid in _threads():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, before.get(tid, everywhere))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the soak runs: everything on every CPU (`shared`), or yurthub and the kubelet-shaped client on
    a CPU of their own and everything else on the others (`reserved`)."""

    node_cpus: set[int] | None = None
    """yurthub's and the measuring client's CPUs in the reserved layout; None in the shared one."""

    @property
    def name(self) -> str:
        return "shared" if self.node_cpus is None else "reserved"

    def detail(self) -> dict[str, Any]:
        return {"layout": self.name, "node_cpus": sorted(self.node_cpus or ())}


@contextlib.contextmanager
def _reserved_cpu(hub_pid: int | None) -> Iterator[Layout]:
    """With a pid: yurthub alone on the machine's last CPU (the kubelet-shaped client joins it, `KubeletProbe`),
    every other thread of the machine (the control plane, the hostile process, the bench) on the others, as
    on a node whose kubelet keeps a CPU for its system daemons (`reservedSystemCPUs`, pods elsewhere) and
    whose cloud is another machine; every thread runs where it ran before afterwards. Threads started
    meanwhile inherit their creator's CPUs. Without a pid: nothing changes."""
    if hub_pid is None:
        yield Layout()
        return
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        raise RuntimeError("--reserved-cpu needs at least two CPUs")
    own = {max(everywhere)}
    before = _pin_all(everywhere - own, hub_pid, own)
    try:
        yield Layout(own)
    finally:
        _unpin_all(before, everywhere)


@contextlib.contextmanager
def _profiled(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy sampling `pid` (every thread, idle ones too, without pausing it) while the block runs."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is None:
        raise RuntimeError("--profile needs py-spy installed beside this Python")
    # --native shows what a thread waits on below Python (`take_gil`: the GIL); it pauses yurthub for each
    # sample, so a profiled run's latencies are not the figures of record
    argv = [spy, "record", "--pid", str(pid), "--native", "--idle", "--threads", "--format", "raw"]
    proc = subprocess.Popen([*argv, "--rate", "100", "--output", str(out)], stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it sampled when interrupted
        proc.wait(30)


def direct_to(server: str, ca_file: str, hub: hosthub.HostHub) -> Direct:
    """The kube-apiserver at `server`, reached with the node's client certificate (the one yurthub uses)."""
    url = urllib.parse.urlsplit(server)
    tls = ssl.create_default_context(cafile=ca_file)
    tls.load_cert_chain(str(hub.cert), str(hub.key))
    return Direct(url.hostname or "127.0.0.1", url.port or 443, tls)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


class Soak:
    """One soak against one hub: the phases run so far, the samples taken, the answers counted."""

    def __init__(
        self,
        plan: Plan,
        hub: hosthub.HostHub,
        target: Target,
        direct: Direct,
        profile: Path | None = None,
        layout: Layout | None = None,
    ) -> None:
        self.plan = plan
        self.layout = layout or Layout()
        self.profile = profile
        """Where to write py-spy's samples of yurthub during the first soak phase (collapsed stacks), if asked."""
        self.hub = hub
        self.target = target
        self.direct = direct
        self.port = int(hub.proxy.rsplit(":", 1)[1])
        self.phases: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.answers: dict[str, collections.Counter[str]] = {
            "plain": collections.Counter(),
            "door": collections.Counter(),
        }
        self.kubelet: dict[str, collections.Counter[str]] = {
            "quiet": collections.Counter(),
            "soak": collections.Counter(),
        }
        self.kubelet_direct: dict[str, collections.Counter[str]] = {
            "quiet": collections.Counter(),
            "soak": collections.Counter(),
        }
        self.sent = 0
        self.server_errors: list[str] = []
        self.hostile_uids: set[int] = set()
        """The users the hostile process ran as (one: `HOSTILE_UID` when the bench runs as root)."""
        self.series: list[int] = []
        self.started = time.monotonic()

    def run(self) -> None:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=become_hostile, initargs=(self.target,)
        ) as driver:
            driver.submit(int, 0).result()  # the hostile process is up (and not root) before anything is timed
            self.quiet()
            self.sample("before")
            self.series.append(metric_series(self.hub))
            for rep in range(self.plan.reps):
                self.soak(driver, rep)
                self.quiet()
            self.sample("after")
            self.series.append(metric_series(self.hub))

    def soak(self, driver: concurrent.futures.Executor, rep: int) -> None:
        start, cpu = time.monotonic(), cpu_s(self.hub.proc.pid)
        profile = self.profile and rep == 0
        with (
            KubeletProbe(self.port, self.direct, self.layout.node_cpus) as probe,
            _profiled(self.hub.proc.pid, self.profile if profile else None),
        ):
            for quarter in range(4):
                count, cap = self.plan.requests // 4, self.plan.phase_cap_s / 4
                done = driver.submit(drive, self.target, count, cap, rep * 4 + quarter).result()
                self.server_errors += done.server_errors[: max(0, 10 - len(self.server_errors))]
                self.hostile_uids.add(done.uid)
                for where, counts in done.counts.items():
                    self.answers[where].update(counts)
                    self.sent += sum(counts.values())
                self.sample(f"soak {rep + 1} quarter {quarter + 1}")
        self.record("soak", probe, time.monotonic() - start, cpu)

    def quiet(self) -> None:
        start, cpu = time.monotonic(), cpu_s(self.hub.proc.pid)
        with KubeletProbe(self.port, self.direct, self.layout.node_cpus) as probe:
            time.sleep(self.plan.quiet_s)
        self.record("quiet", probe, time.monotonic() - start, cpu)

    def sample(self, label: str) -> None:
        if self.hub.proc.poll() is not None:
            raise RuntimeError(f"yurthub exited during the soak: {self.hub.log.read_text()[-3000:]}")
        self.samples.append(
            {
                "at": label,
                "requests": self.sent,
                "rss_mb": rss_mb(self.hub.proc.pid),
                "cache_mb": dir_mb(self.hub.cache),
            }
        )

    def record(self, kind: str, probe: KubeletProbe, seconds: float, cpu: tuple[float, float, float]) -> None:
        self.kubelet[kind].update(probe.statuses)
        self.kubelet_direct[kind].update(probe.direct_statuses)
        lat, direct = probe.latencies_ms, probe.direct_ms
        phase: dict[str, Any] = {
            "kind": kind,
            "seconds": round(seconds, 1),
            "samples": len(lat),
            "p50_ms": pct(lat, 0.5) if lat else None,
            "p99_ms": pct(lat, 0.99) if lat else None,
            "direct_samples": len(direct),
            "direct_p50_ms": pct(direct, 0.5) if direct else None,
            "direct_p99_ms": pct(direct, 0.99) if direct else None,
        }
        main, process, queued = cpu_s(self.hub.proc.pid)
        # the share of the phase the event loop's thread ran (its CPU time over wall time; 1.0 is a saturated
        # loop), and the whole process's CPU over wall time (threads included)
        phase["loop_cpu_share"] = round((main - cpu[0]) / seconds, 3)
        phase["process_cpu_share"] = round((process - cpu[1]) / seconds, 3)
        # the share of the phase the loop's thread was runnable but waited for a core
        phase["loop_runqueue_share"] = round((queued - cpu[2]) / seconds, 3)
        if lat and direct:
            # yurthub's part: what going through it adds to the same GETs at the same moments
            phase["added_p50_ms"] = round(phase["p50_ms"] - phase["direct_p50_ms"], 3)
            phase["added_p99_ms"] = round(phase["p99_ms"] - phase["direct_p99_ms"], 3)
        self.phases.append(phase)

    def per_soak_phase(self) -> list[dict[str, float]]:
        """Per soak phase: the highest RSS sampled (quarters), and how much the cache grew over the phase.

        RSS rises and falls with the bodies in flight (large buffers go back to the system when freed), so
        its peak per phase is compared, not its value at one instant; the cache only grows or stays."""
        out: list[dict[str, float]] = []
        for rep in range(1, self.plan.reps + 1):
            quarters = [s for s in self.samples if s["at"].startswith(f"soak {rep} ")]
            ahead = self.samples[self.samples.index(quarters[0]) - 1]
            out.append(
                {
                    "rep": rep,
                    "rss_mb_peak": max(s["rss_mb"] for s in quarters),
                    "rss_mb_end": quarters[-1]["rss_mb"],
                    "cache_mb_end": quarters[-1]["cache_mb"],
                    "cache_mb_growth": round(quarters[-1]["cache_mb"] - ahead["cache_mb"], 2),
                }
            )
        return out

    def report(self) -> dict[str, Any]:
        plan, phases, samples = self.plan, self.phases, self.samples

        def of(kind: str, key: str) -> dict[str, float]:
            """The median over the phases of a kind of one per-phase figure, with its min and max."""
            return _summary([p[key] for p in phases if p["kind"] == kind and p.get(key) is not None])

        kubelet_ms = {
            f"{kind}_{way}{q}": of(kind, f"{way}{q}_ms")
            for kind in ("quiet", "soak")
            for way in ("p", "direct_p", "added_p")
            for q in ("50", "99")
        }
        before, after = samples[0], samples[-1]
        per_phase = self.per_soak_phase()
        first, last = per_phase[0], per_phase[-1]
        figures: dict[str, float] = {
            "rss_mb_before_hostile_soak": before["rss_mb"],
            "rss_mb_after_hostile_soak": after["rss_mb"],
            "rss_mb_peak_during_hostile_soak": max(s["rss_mb"] for s in samples),
            "cache_mb_before_hostile_soak": before["cache_mb"],
            "cache_mb_after_hostile_soak": after["cache_mb"],
            # the first soak phase against the last: a bounded hub's peak stops rising, its cache stops growing
            "rss_mb_peak_first_soak_phase": first["rss_mb_peak"],
            "rss_mb_peak_last_soak_phase": last["rss_mb_peak"],
            "cache_mb_growth_first_soak_phase": first["cache_mb_growth"],
            "cache_mb_growth_last_soak_phase": last["cache_mb_growth"],
            "metric_series_before_hostile_soak": self.series[0],
            "metric_series_after_hostile_soak": self.series[-1],
            "hostile_soak_requests": self.sent,
            # refusals a bounded hub gives (past a body limit, past a cap on memory), and failed connections
            "hostile_soak_answers_413": sum(c["413"] for c in self.answers.values()),
            "hostile_soak_answers_429": sum(c["429"] for c in self.answers.values()),
            "hostile_soak_connection_errors": sum(
                n for c in self.answers.values() for k, n in c.items() if k.startswith("error:")
            ),
            # the share of wall time yurthub's event loop thread was on a CPU (1.0: saturated), and the process's
            "yurthub_loop_cpu_share_quiet": of("quiet", "loop_cpu_share")["median"],
            "yurthub_loop_cpu_share_during_soak": of("soak", "loop_cpu_share")["median"],
            "yurthub_process_cpu_share_during_soak": of("soak", "process_cpu_share")["median"],
            "yurthub_loop_runqueue_share_quiet": of("quiet", "loop_runqueue_share")["median"],
            "yurthub_loop_runqueue_share_during_soak": of("soak", "loop_runqueue_share")["median"],
            "hostile_soak_seconds": round(time.monotonic() - self.started, 1),
            "kubelet_get_samples_quiet": sum(p["samples"] for p in phases if p["kind"] == "quiet"),
            "kubelet_get_samples_during_soak": sum(p["samples"] for p in phases if p["kind"] == "soak"),
        }
        # kubelet's GETs through yurthub; the same GETs, interleaved, straight at the kube-apiserver (the
        # machine's and the apiserver's part); yurthub's part (through minus direct, per phase): each the median
        # over the phases of a kind
        for name, way in (("kubelet_get", "p"), ("kubelet_direct_get", "direct_p"), ("yurthub_added", "added_p")):
            for q in ("50", "99"):
                for kind, suffix in (("quiet", "quiet"), ("soak", "during_soak")):
                    figures[f"{name}_p{q}_ms_{suffix}"] = kubelet_ms[f"{kind}_{way}{q}"]["median"]
        figures["kubelet_get_p50_during_soak_over_quiet_ratio"] = round(
            figures["kubelet_get_p50_ms_during_soak"] / figures["kubelet_get_p50_ms_quiet"], 3
        )
        figures["kubelet_get_p99_during_soak_over_quiet_ratio"] = round(
            figures["kubelet_get_p99_ms_during_soak"] / figures["kubelet_get_p99_ms_quiet"], 3
        )
        for q in ("p50", "p99"):
            figures[f"kubelet_direct_get_{q}_during_soak_over_quiet_ratio"] = _ratio(
                figures[f"kubelet_direct_get_{q}_ms_during_soak"], figures[f"kubelet_direct_get_{q}_ms_quiet"]
            )
            for suffix in ("quiet", "during_soak"):
                figures[f"kubelet_get_{q}_through_over_direct_ratio_{suffix}"] = _ratio(
                    figures[f"kubelet_get_{q}_ms_{suffix}"], figures[f"kubelet_direct_get_{q}_ms_{suffix}"]
                )
        detail = {
            "plan": dataclasses.asdict(plan),
            "kubelet_rate_per_s": KUBELET_RATE,
            "hostile_workers": WORKERS,
            "valid_door_tokens": VALID_TOKENS,
            "kubelet_get_ms": kubelet_ms,
            "phases": phases,
            "per_soak_phase": per_phase,
            "samples": samples,
            "answers": {where: dict(sorted(c.items())) for where, c in self.answers.items()},
            "kubelet_answers": {kind: dict(sorted(c.items())) for kind, c in self.kubelet.items()},
            "kubelet_direct_answers": {kind: dict(sorted(c.items())) for kind, c in self.kubelet_direct.items()},
            "hostile_5xx_examples": self.server_errors,
            "hostile_process_uids": sorted(self.hostile_uids),
        }
        return {"figures": figures, "detail": detail}


def measure(
    kube: cluster.Cluster,
    directory: Path,
    plan: Plan | None = None,
    profile: Path | None = None,
    hub_args: tuple[str, ...] = (),
    reserved_cpu: bool = False,
) -> dict[str, Any]:
    """Run the soak against a hub of its own on `kube`; {"figures": flat numbers, "detail": the curves}.
    `reserved_cpu`: yurthub on a CPU of its own, everything else on the others (`_reserved_cpu`)."""
    plane = kube.plane
    assert plane is not None
    tokens = prepare(kube)
    hub, door_port = start_hub(kube, directory, *hub_args)
    ca = str(plane.directory / "pki" / "ca.crt")
    target = Target(hub.proxy, f"https://127.0.0.1:{door_port}", ca, tokens, largest_body())
    try:
        with _reserved_cpu(hub.proc.pid if reserved_cpu else None) as layout:
            soak = Soak(plan or Plan(), hub, target, direct_to(plane.server, ca, hub), profile, layout)
            soak.run()
    finally:
        hub.stop()
    result = soak.report()
    result["detail"]["yurthub_log_errors"] = log_errors(hub.log)
    result["detail"]["cpu_layout"] = layout.detail()
    return result


def main(argv: list[str] | None = None) -> int:
    """Soak alone, on a control plane of its own; prints the result (and writes it to --out if given)."""
    parser = argparse.ArgumentParser(prog="python -m bench.yurthub_soak", description="yurthub's hostile soak alone")
    defaults = Plan()
    parser.add_argument("--requests", type=int, default=defaults.requests, help="hostile requests per soak phase")
    parser.add_argument("--reps", type=int, default=defaults.reps, help="soak phases (quiet ones between)")
    parser.add_argument("--quiet-s", type=float, default=defaults.quiet_s, help="seconds of each quiet phase")
    parser.add_argument("--phase-cap-s", type=float, default=defaults.phase_cap_s, help="cap on one soak phase")
    parser.add_argument("--out", type=Path, help="also write the result to this JSON file")
    parser.add_argument(
        "--hub-arg",
        action="append",
        default=[],
        help="one more yurthub flag, e.g. --hub-arg=--max-concurrent-non-node=1000 (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample yurthub with py-spy (installed apart) during the first soak phase; collapsed stacks to this file",
    )
    parser.add_argument(
        "--reserved-cpu",
        action="store_true",
        help="yurthub alone on the last CPU, everything else on the others (a node that keeps a CPU for its daemons)",
    )
    args = parser.parse_args(argv)
    if args.reps < 1 or args.requests < 4:
        parser.error("--reps must be at least 1 and --requests at least 4")
    plan = Plan(requests=args.requests, reps=args.reps, quiet_s=args.quiet_s, phase_cap_s=args.phase_cap_s)
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as kube, tempfile.TemporaryDirectory() as tmp:
        result = measure(kube, Path(tmp), plan, args.profile, tuple(args.hub_arg), args.reserved_cpu)
    result["detail"]["hub_args"] = args.hub_arg
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
