"""yurthub against the direct path and against OpenYurt's yurthub v1.7.0, measured in the same run on the real
local cluster.

Four systems take turns request by request (the order rotating): direct to kube-apiserver, yurt-edge's yurthub,
OpenYurt's with its default filters and OpenYurt's with `--enable-resource-filter=false` (its `serviceenvupdater`
filter re-encodes kubelet's pod lists). Each hub has a node identity of its own and runs with its default
heartbeat settings. Clients keep their connections alive and send kubelet's User-Agent and Accept, as kubelet
does, so TLS handshakes are not what is measured. Offline is the apiserver process stopped with SIGSTOP, so
connections hang exactly like a dead link. Every figure is the median of `REPS` repetitions with min, max and
the per-repetition values kept (a repetition's value is itself a p50 over its samples); a p99 is only given
pooled over every repetition's samples, with their count. Memory and disk come from fresh hubs per repetition.
`cache_events_per_s` replays a watch stream framed as the apiserver frames it through the relay's own cache
path (`cache.record_events`, one event per transaction), onto a view made from the cloud's real pod list.

The same cluster then runs the hostile soak (`bench.yurthub_soak`, on a hub of its own): its figures compare
yurthub with itself, before and after, and a kubelet-shaped client quiet and during the soak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import signal
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import machine, openyurt_hub, yurthub_soak
from testenv import cluster, hosthub, hubinstall, images
from testenv.kubectl import wait_for
from yurthub import cache, requestinfo, storage, wire

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/bench"
PB = "application/vnd.kubernetes.protobuf"
JSON = "application/json"
KUBELET_ACCEPT = f"{PB},{JSON}"
"""What kubelet asks for: protobuf, or JSON. yurthub reads kubelet's pods as JSON (what it rewrites offline is
cached in the one encoding it can rewrite), the cloud and OpenYurt answer protobuf."""
NODE = "bench-node"
PODS = 1000
CONFIGMAPS = 10_000
REPS = 3
ROOT = Path(__file__).resolve().parent.parent
LIST_SAMPLES = 15
GET_SAMPLES = 200
WATCH_ROUNDS = 20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class Client:
    """One kept-alive connection, the way a node component holds one."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext | None = None,
        timeout: float = 30,
        accept: str = KUBELET_ACCEPT,
    ) -> None:
        self.accept = accept
        self.conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
            if context
            else http.client.HTTPConnection(host, port, timeout=timeout)
        )

    encoding: wire.Encoding = wire.Encoding.PROTOBUF
    """The encoding of the last answer (its Content-Type)."""

    def get(self, path: str, accept: str = "") -> tuple[int, bytes, float]:
        start = time.perf_counter()
        self.conn.request("GET", path, headers={"Accept": accept or self.accept, "User-Agent": KUBELET})
        resp = self.conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - start) * 1000
        self.encoding = wire.encoding_of(resp.headers.get("Content-Type", "")) or wire.Encoding.PROTOBUF
        return resp.status, body, ms


def pods(n: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "bench", "labels": {"app": "bench", "index": str(i)}},
            "spec": {
                "nodeName": NODE,
                # the node never reports ready: without this the taint manager evicts the pods after 300 s
                "tolerations": [{"operator": "Exists"}],
                "containers": [
                    {
                        "name": "c",
                        "image": images.BUSYBOX_IMAGE,
                        "command": ["sleep", "3600"],
                        "env": [{"name": "INDEX", "value": str(i)}],
                    }
                ],
            },
        }
        for i in range(n)
    ]


def apply_in_chunks(kube: cluster.Cluster, objects: list[dict[str, Any]], chunk: int = 500) -> None:
    for i in range(0, len(objects), chunk):
        kube.kubectl.run(
            "create",
            "-f",
            "-",
            timeout=300,
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects[i : i + chunk]}),
        )


# --- the systems compared ----------------------------------------------------------------------------

OURS, OY, OY_OFF = "yurt_edge", "openyurt", "openyurt_filters_off"
HUBS = (OURS, OY, OY_OFF)
NODES = {OURS: NODE, OY: "bench-node-oy", OY_OFF: "bench-node-oy-nf"}
"""One node identity per hub, so two OpenYurt hubs never share a node lease; each is bound to `view`."""

OURS_DEFAULTS = (
    # yurthub's own defaults (the test harness's hub checks the cloud every second): both hubs as shipped
    "--heartbeat-interval-seconds=10",
    "--heartbeat-timeout-seconds=2",
    "--heartbeat-failed-retry=3",
    "--request-timeout-seconds=30",
)

LIST_PATH = "/api/v1/namespaces/bench/pods"
FIRST_SELECTOR = LIST_PATH + "?labelSelector=app%3Dbench"
SECOND_SELECTOR = LIST_PATH + "?labelSelector=index%3D5"
GET_PATH = "/api/v1/namespaces/bench/pods/p7"
WHATS = (("list", LIST_PATH), ("get", GET_PATH), ("second_selector", SECOND_SELECTOR))


@dataclasses.dataclass
class Running:
    """A hub under test: its plain proxy port and how to stop it."""

    name: str
    port: int
    pid: int
    cache: Path
    stop: Callable[[], None]

    def client(self, timeout: float = 30) -> Client:
        return Client("127.0.0.1", self.port, timeout=timeout)


def start_ours(kube: cluster.Cluster, directory: Path) -> Running:
    plane = kube.plane
    assert plane is not None
    hub = hosthub.start(plane, plane.server, NODE, directory, "--cache-agents=kubelet", *OURS_DEFAULTS)
    return Running(OURS, int(hub.proxy.rsplit(":", 1)[1]), hub.proc.pid, hub.cache, hub.stop)


def start_openyurt(kube: cluster.Cluster, directory: Path, *, filters: bool) -> Running:
    name = OY if filters else OY_OFF
    hub = openyurt_hub.start(kube, NODES[name], directory, filters=filters)
    return Running(name, hub.proxy_port, hub.proc.pid, hub.cache, hub.stop)


def figure(raw: list[float]) -> dict[str, Any]:
    """A figure from its per-repetition values: the median, min and max, and the values themselves."""
    return {
        "median": round(statistics.median(raw), 3),
        "min": round(min(raw), 3),
        "max": round(max(raw), 3),
        "raw": [round(v, 3) for v in raw],
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def disk(path: Path) -> tuple[float, int]:
    """MB allocated on disk (as `du` counts: whole blocks, so many small files cost what they really do) and
    the number of files under `path`."""
    blocks, files = 0, 0
    for p in path.rglob("*"):
        if p.is_file():
            blocks += p.stat().st_blocks
            files += 1
    return round(blocks * 512 / 1e6, 2), files


def settled_disk(path: Path, above: float) -> tuple[float, int]:
    """The cache's size once its writer is done: past `above` MB (what was just listed has reached the disk;
    OpenYurt writes its cache some time after answering) and two readings half a second apart agree. At most
    60 s: a hub that has not cached what it was given by then is recorded as it is."""
    last = disk(path)
    for _ in range(120):
        time.sleep(0.5)
        now = disk(path)
        if now == last and now[0] > above:
            return now
        last = now
    return last


# --- online and offline answers ----------------------------------------------------------------------


def list_rv(body: bytes, encoding: wire.Encoding) -> str:
    return wire.parse_list(encoding, body).resource_version


def items(body: bytes, encoding: wire.Encoding) -> list[bytes]:
    return [o.body for o in wire.parse_list(encoding, body).items]


def hubs_current(direct: Client, hubs: dict[str, Client]) -> bool:
    """Whether every hub answers GET p7 with the cloud's current copy (so it is online again, not serving its
    cache)."""
    status, body, _ = direct.get(GET_PATH)
    want = wire.parse_object(direct.encoding, body).resource_version
    for client in hubs.values():
        status, body, _ = client.get(GET_PATH)
        if status != 200 or wire.parse_object(client.encoding, body).resource_version != want:
            return False
    return True


def notice_times(ports: dict[str, int], since: float, limit_s: float = 60) -> dict[str, float]:
    """Seconds from `since` (the cloud frozen) until each hub answers a kubelet-shaped GET: a new request is
    sent every 0.2 s on a fresh connection until one is answered 200, so a hub that first lets requests
    hang is timed by when it answers at all, not by any client timeout."""
    found: dict[str, float] = {}
    lock = threading.Lock()

    def one(name: str, port: int) -> None:
        try:
            status, _, _ = Client("127.0.0.1", port, timeout=limit_s).get(GET_PATH)
        except OSError:
            return
        if status == 200:
            with lock:
                found.setdefault(name, time.perf_counter() - since)

    threads = []
    deadline = since + limit_s
    while time.perf_counter() < deadline and len(found) < len(ports):
        for name, port in ports.items():
            if name not in found:
                t = threading.Thread(target=one, args=(name, port), daemon=True)
                t.start()
                threads.append(t)
        time.sleep(0.2)
    missing = set(ports) - set(found)
    if missing:
        raise TimeoutError(f"no answer in {limit_s:g}s from {sorted(missing)} with the cloud frozen")
    return {name: round(s, 2) for name, s in found.items()}


def watch_added(kube: cluster.Cluster, clients: dict[str, http.client.HTTPConnection], rounds: int) -> dict[str, float]:
    """Label a pod `rounds` times; each event arrives on a direct watch and on one through each hub: the p50
    of each hub's arrival after the direct one (ms)."""
    arrivals: dict[str, dict[str, float]] = {name: {} for name in clients}
    path = LIST_PATH + "?watch=1&fieldSelector=metadata.name%3Dp1&allowWatchBookmarks=false"

    def watch(name: str, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": KUBELET})
        resp = conn.getresponse()
        with contextlib.suppress(OSError, ValueError):
            while line := resp.readline():
                event = json.loads(line)
                arrivals[name].setdefault(event["object"]["metadata"]["resourceVersion"], time.perf_counter())

    threads = [threading.Thread(target=watch, args=(n, c), daemon=True) for n, c in clients.items()]
    for t in threads:
        t.start()
    stamp = time.time_ns()
    kube.kubectl.run("label", "pod", "p1", "-n", "bench", f"warm={stamp}", "--overwrite")
    wait_for("every watch to see the first event", lambda: all(arrivals.values()), timeout=30, interval=0.05)
    first = {name: set(a) for name, a in arrivals.items()}
    for i in range(rounds):
        kube.kubectl.run("label", "pod", "p1", "-n", "bench", f"round={stamp}-{i}", "--overwrite")

    def all_arrived() -> bool:
        return all(len(a) - len(first[n]) >= rounds for n, a in arrivals.items())

    with contextlib.suppress(TimeoutError):
        wait_for("every event on every watch", all_arrived, timeout=20, interval=0.05)
    for c in clients.values():
        if c.sock:
            with contextlib.suppress(OSError):
                c.sock.shutdown(2)
    direct = {rv: t for rv, t in arrivals["direct"].items() if rv not in first["direct"]}
    return {
        hub: pct([(arrivals[hub][rv] - t) * 1000 for rv, t in direct.items() if rv in arrivals[hub]], 0.5)
        for hub in clients
        if hub != "direct"
    }


Reference = dict[tuple[str, wire.Encoding], bytes]


def equal_answers(
    reference: Reference, answers: dict[str, tuple[int, bytes, wire.Encoding]], online_rv: str
) -> dict[str, Any]:
    """Whether a hub's offline answers are the cloud's in the encoding the hub answered: the LIST's items and
    its resourceVersion (the one the cloud gave the hub's last online LIST), GET p7's body, and a LIST with a
    second label selector."""
    out: dict[str, Any] = {}
    status, body, enc = answers["list"]
    out["list_status"] = status
    out["encoding"] = enc.value
    out["list_items_equal"] = status == 200 and items(body, enc) == items(reference["list", enc], enc)
    out["list_rv_equal"] = status == 200 and list_rv(body, enc) == online_rv
    status, body, enc = answers["get"]
    out["get_status"] = status
    out["get_equal"] = status == 200 and body == reference["get", enc]
    status, body, enc = answers["second_selector"]
    out["second_selector_status"] = status
    out["second_selector_items_equal"] = status == 200 and items(body, enc) == items(
        reference["second_selector", enc], enc
    )
    return out


# --- the side-by-side run ----------------------------------------------------------------------------


def prepare_cluster(kube: cluster.Cluster) -> None:
    kube.kubectl.run("create", "namespace", "bench")
    kube.kubectl.apply(
        [
            # the pods' node, as an object only (no kubelet): the pod garbage collector deletes pods bound to a
            # node that does not exist, about a minute after they are made
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
            # the pods' account, made here: the controller-manager makes it too, but maybe after the pods come
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "bench"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "bench-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{node}"}
                    for node in NODES.values()
                ],
            },
        ]
    )
    # `view` is an aggregated role: its rules appear once the controller-manager's aggregation ran
    wait_for("the view role's rules", lambda: bool(kube.kubectl.get("clusterrole", "view").get("rules")), timeout=60)
    openyurt_hub.prepare(kube)
    apply_in_chunks(kube, pods(PODS))


def offline_round(
    kube: cluster.Cluster,
    direct: Client,
    running: dict[str, Running],
    keep: Callable[[str, str, float], None],
    answers: dict[str, list[dict[str, Any]]],
    rep: int,
) -> None:
    """One freeze of the cloud: how soon each hub answers, its offline LIST time, whether its offline answers
    are the cloud's; then the cloud back and every hub online again."""
    plane = kube.plane
    assert plane is not None
    hubs = {name: hub.client() for name, hub in running.items()}
    # offline: the cloud's answers, each hub's last online answers, then the cloud frozen
    online_rv = {}
    for name, client in hubs.items():
        for path in (FIRST_SELECTOR, SECOND_SELECTOR):
            client.get(path)
        online_rv[name] = list_rv(client.get(LIST_PATH)[1], client.encoding)
    reference: Reference = {
        (what, enc): direct.get(path, accept)[1]
        for what, path in WHATS
        for enc, accept in ((wire.Encoding.PROTOBUF, PB), (wire.Encoding.JSON, JSON))
    }
    listed = len(items(reference["list", wire.Encoding.PROTOBUF], wire.Encoding.PROTOBUF))
    assert listed == PODS, f"the cloud lists {listed} pods, not {PODS}: the figures would not be about 1k pods"
    apiserver = next(p for p in plane.processes if p.name == "kube-apiserver")
    os.kill(apiserver.pid, signal.SIGSTOP)
    frozen = time.perf_counter()
    try:
        for name, s in notice_times({n: h.port for n, h in running.items()}, frozen).items():
            keep("time_to_notice_frozen_cloud_s", name, s)
        offline = {name: hub.client() for name, hub in running.items()}
        o_lists: dict[str, list[float]] = {n: [] for n in HUBS}
        for i in range(LIST_SAMPLES):
            for name in HUBS[i % 3 :] + HUBS[: i % 3]:
                status, _, ms = offline[name].get(LIST_PATH)
                if status == 200:
                    o_lists[name].append(ms)
        for name, values in o_lists.items():
            if values:
                keep("list_1k_pods_offline_p50_ms", name, pct(values, 0.5))
        for name, client in offline.items():
            got = {what: (*client.get(path)[:2], client.encoding) for what, path in WHATS}
            answers[name].append(equal_answers(reference, got, online_rv[name]))
    finally:
        os.kill(apiserver.pid, signal.SIGCONT)
    # back online: every hub serves the cloud's current p7 again (a label changed while it was cached)
    kube.kubectl.run("label", "pod", "p7", "-n", "bench", f"rep={rep}", "--overwrite")
    fresh = {name: hub.client() for name, hub in running.items()}
    wait_for("every hub online again", lambda: hubs_current(direct, fresh), timeout=120, interval=0.5)


def side_by_side(
    kube: cluster.Cluster, directory: Path, reps: int
) -> tuple[dict[str, Any], dict[wire.Encoding, bytes]]:
    """Every request figure for direct, ours and OpenYurt (filters on and off), interleaved, `reps` times.
    Returns the figures and the cloud's 1k-pod LIST in both encodings, which the in-process cache figure replays."""
    plane = kube.plane
    assert plane is not None
    prepare_cluster(kube)
    context = ssl.create_default_context(cafile=str(plane.directory / "pki" / "ca.crt"))
    pair = plane.ca.issue(f"system:node:{NODE}", organizations=("system:nodes",), client=True)
    cert, key = pair.write(directory, "direct")
    context.load_cert_chain(str(cert), str(key))
    api_port = int(plane.server.rsplit(":", 1)[1])
    running: dict[str, Running] = {}
    raw: dict[str, dict[str, list[float]]] = {}
    get_samples: dict[str, list[float]] = {h: [] for h in HUBS}
    answers: dict[str, list[dict[str, Any]]] = {h: [] for h in HUBS}

    def keep(fig: str, system: str, value: float) -> None:
        raw.setdefault(fig, {}).setdefault(system, []).append(value)

    try:
        running[OURS] = start_ours(kube, directory / OURS)
        running[OY] = start_openyurt(kube, directory / OY, filters=True)
        running[OY_OFF] = start_openyurt(kube, directory / OY_OFF, filters=False)
        direct = Client("127.0.0.1", api_port, context)
        hubs = {name: hub.client() for name, hub in running.items()}
        # the cloud's JSON answer too: yurt-edge reads kubelet's pods as JSON, and that costs the cloud more
        direct_json = Client("127.0.0.1", api_port, context, accept=JSON)
        clients = {"direct": direct, "direct_json": direct_json, **hubs}
        for name, client in clients.items():  # warm every path and fill the caches
            for path in (LIST_PATH, FIRST_SELECTOR, SECOND_SELECTOR, GET_PATH):
                status, body, _ = client.get(path)
                assert status == 200, f"{name} GET {path}: {status} {body[:300]!r}"
        cloud_lists = {
            wire.Encoding.PROTOBUF: direct.get(LIST_PATH, PB)[1],
            wire.Encoding.JSON: direct.get(LIST_PATH, JSON)[1],
        }
        order = list(clients)
        for rep in range(reps):
            progress(f"repetition {rep + 1} of {reps}")
            # online: LIST and GET, interleaved request by request, the order rotating
            lists: dict[str, list[float]] = {n: [] for n in clients}
            gets: dict[str, list[float]] = {h: [] for h in HUBS}
            for i in range(LIST_SAMPLES):
                for name in order[i % len(order) :] + order[: i % len(order)]:
                    lists[name].append(clients[name].get(LIST_PATH)[2])
            for i in range(GET_SAMPLES):
                d = direct.get(GET_PATH)[2]
                for name in HUBS[i % 3 :] + HUBS[: i % 3]:
                    gets[name].append(hubs[name].get(GET_PATH)[2] - d)
            for name, values in lists.items():
                keep("list_1k_pods_online_p50_ms", name, pct(values, 0.5))
            for name, values in gets.items():
                keep("get_added_latency_p50_ms", name, pct(values, 0.5))
                get_samples[name] += values
            conns: dict[str, http.client.HTTPConnection] = {
                "direct": http.client.HTTPSConnection("127.0.0.1", api_port, context=context, timeout=60),
                **{n: http.client.HTTPConnection("127.0.0.1", h.port, timeout=60) for n, h in running.items()},
            }
            for name, ms in watch_added(kube, conns, WATCH_ROUNDS).items():
                keep("watch_event_added_latency_p50_ms", name, ms)
            offline_round(kube, direct, running, keep, answers, rep)
            hubs = {name: hub.client() for name, hub in running.items()}
            clients = {"direct": direct, "direct_json": direct_json, **hubs}
    finally:
        for hub in running.values():
            hub.stop()
    out = {fig: {name: figure(values) for name, values in systems.items()} for fig, systems in raw.items()}
    for name in HUBS:
        out.setdefault("get_added_latency_p99_ms", {})[name] = {
            "value": pct(get_samples[name], 0.99),
            "samples": len(get_samples[name]),
        }
    out["offline_answers"] = {name: answers[name] for name in HUBS}  # type: ignore[misc]
    return out, cloud_lists


def footprint(kube: cluster.Cluster, directory: Path, reps: int) -> dict[str, Any]:
    """Cache on disk with only the 1k pods, then with 10k ConfigMaps added, and RSS then: a fresh hub of each
    kind per repetition (OpenYurt with its filters, as shipped), started together, fed the same LISTs."""
    configmaps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm{i}", "namespace": "bench"},
            "data": {"key": f"value-{i}"},
        }
        for i in range(CONFIGMAPS)
    ]
    apply_in_chunks(kube, configmaps, chunk=1000)
    raw: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        running = {
            OURS: start_ours(kube, directory / f"fp{rep}-{OURS}"),
            OY: start_openyurt(kube, directory / f"fp{rep}-{OY}", filters=True),
        }
        try:
            before = {name: disk(hub.cache)[0] for name, hub in running.items()}
            for name, hub in running.items():
                client = hub.client()
                for path in (LIST_PATH, GET_PATH):
                    status, body, _ = client.get(path)
                    assert status == 200, f"{name} GET {path}: {status} {body[:300]!r}"
            for name, hub in running.items():
                mb, files = settled_disk(hub.cache, above=before[name] + 1.0)  # 1k pods are over 1 MB
                before[name] = mb
                raw.setdefault("cache_disk_mb_1k_pods", {}).setdefault(name, []).append(mb)
                raw.setdefault("cache_files_1k_pods", {}).setdefault(name, []).append(files)
            for name, hub in running.items():
                hub_client = hub.client(timeout=120)
                status, body, _ = hub_client.get("/api/v1/namespaces/bench/configmaps")
                assert status == 200, f"{name} LIST configmaps: {status} {body[:300]!r}"
                assert len(items(body, hub_client.encoding)) > CONFIGMAPS  # + kube-root-ca.crt
            for name, hub in running.items():
                mb, files = settled_disk(hub.cache, above=before[name] + 1.0)  # and so are 10k ConfigMaps
                raw.setdefault("cache_disk_mb_10k_configmaps", {}).setdefault(name, []).append(mb)
                raw.setdefault("cache_files_10k_configmaps", {}).setdefault(name, []).append(files)
            time.sleep(5)  # what a hub frees after caching is given back within this
            for name, hub in running.items():
                raw.setdefault("rss_mb_idle_10k_objects", {}).setdefault(name, []).append(rss_mb(hub.pid))
        finally:
            for hub in running.values():
                hub.stop()
    return {fig: {name: figure(values) for name, values in systems.items()} for fig, systems in raw.items()}


def flat(figures: dict[str, Any]) -> dict[str, float]:
    """The keys other readers know (ours, unprefixed), OpenYurt's prefixed, and the ratios ours/OpenYurt."""
    out: dict[str, float] = {}
    for fig, systems in figures.items():
        if fig == "offline_answers" or not isinstance(systems, dict):
            continue
        for name, value in systems.items():
            v = value.get("median", value.get("value"))
            if name == OURS:
                out[fig] = v
            elif name in ("direct", "direct_json"):
                out[fig.replace("_online", "_" + name)] = v
            else:
                out[f"{name}_{fig}"] = v
        if OURS in systems:
            ours = systems[OURS].get("median", systems[OURS].get("value"))
            for other in (OY, OY_OFF):
                if other in systems:
                    theirs = systems[other].get("median", systems[other].get("value"))
                    out[f"{fig}_ratio_to_{other}"] = ratio(ours, theirs)  # type: ignore[assignment]
    return out


# --- the cache's own write path ----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _with_rv(body: bytes, rv: str) -> bytes:
    """A pod's protobuf GET body with another metadata.resourceVersion, every other byte as the cloud sent it."""
    api_version, kind, raw = wire.unwrap(body)
    assert raw[0] == 0x0A, "metadata is a pod's first field"
    length, pos = _read_varint(raw, 1)
    meta, rest = raw[pos : pos + length], raw[pos + length :]
    p = 0
    while p < len(meta):
        tag, q = _read_varint(meta, p)
        if tag & 7 == 2:
            size, q = _read_varint(meta, q)
            end = q + size
        elif tag & 7 == 0:
            end = _read_varint(meta, q)[1]
        else:
            raise ValueError(f"unexpected wire type in ObjectMeta: {tag & 7}")
        if tag >> 3 == 6:
            meta = meta[:p] + b"\x32" + _varint(len(rv)) + rv.encode() + meta[end:]
            break
        p = end
    raw = b"\x0a" + _varint(len(meta)) + meta + rest
    return wire.wrap(api_version, kind, raw)


_JSON_RV = re.compile(rb'"resourceVersion":\s*"[0-9]+"')


def watch_stream(cloud_list: bytes, encoding: wire.Encoding, events: int) -> bytes:
    """A watch stream as kube-apiserver sends it: MODIFIED events of the listed pods in turn, each newer than
    the list. Protobuf: a 4-byte length, then a WatchEvent whose object is the pod's full protobuf encoding;
    JSON: one `{"type":...,"object":...}` line per event."""
    listing = wire.parse_list(encoding, cloud_list)
    base = int(listing.resource_version)
    out = bytearray()
    for i in range(events):
        obj = listing.items[i % len(listing.items)]
        rv = str(base + 1 + i)
        if encoding is wire.Encoding.PROTOBUF:
            frame = wire.bytes_field(1, b"MODIFIED") + wire.bytes_field(2, wire.bytes_field(1, _with_rv(obj.body, rv)))
            out += len(frame).to_bytes(4, "big") + frame
        else:
            body = _JSON_RV.sub(b'"resourceVersion":"' + rv.encode() + b'"', obj.body.rstrip(b"\n"), count=1)
            out += b'{"type":"MODIFIED","object":' + body + b"}\n"
    return bytes(out)


def cache_events_per_s(cloud_list: bytes, encoding: wire.Encoding, events: int = 5000) -> float:
    """Watch events persisted per second through the relay's own path: the cloud's 1k-pod LIST recorded as a
    view (`cache.record_list`), then a watch stream of `events` MODIFIED pods cut into frames by
    `wire.FrameSplitter` in 64 KiB reads and each frame recorded on its own (`cache.record_events`: one
    event per transaction, as watch events arrive one at a time), on one thread, in SQLite on disk."""
    stream = watch_stream(cloud_list, encoding, events)
    list_info = requestinfo.parse("GET", LIST_PATH, {}, KUBELET)
    watch_info = requestinfo.parse("GET", LIST_PATH, {"watch": "1"}, KUBELET)
    with tempfile.TemporaryDirectory() as tmp:
        store = storage.SqliteStorage(Path(tmp))
        assert cache.record_list(store, list_info, encoding, cloud_list)
        splitter = wire.FrameSplitter(encoding)
        recorded = 0
        start = time.perf_counter()
        for i in range(0, len(stream), 65536):
            for frame in splitter.feed(stream[i : i + 65536]):
                cache.record_events(store, watch_info, encoding, [frame])
                recorded += 1
        elapsed = time.perf_counter() - start
        view = store.read_view(cache.view_key(list_info, encoding))
        store.close()
    want = str(int(list_rv(cloud_list, encoding)) + events)
    assert recorded == events and view is not None and view.resource_version == want
    return round(events / elapsed)


def node_restart(offline: bool) -> float:
    """Seconds from a node's power-on to all its pods' containers running again (online or cut off)."""
    with cluster.Cluster.start(cluster.Settings()) as kube:
        assert kube.plane is not None
        hubinstall.put_behind_yurthub(
            kube.node,
            server=kube.plane.cloud_server,
            extra_args="--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2",
        )
        kube.kubectl.run(
            "create",
            "deployment",
            "restart",
            f"--image={images.BUSYBOX_IMAGE}",
            "--replicas=10",
            "--",
            "sleep",
            "100000",
        )
        wait_for("10 pods", lambda: running_containers(kube) >= 10, timeout=180)
        if offline:
            kube.node.cut_link()
            wait_for(
                "offline",
                lambda: not hubinstall.yurthub_status(kube.node)["cloud"]["reachable"],  # type: ignore[index]
                timeout=30,
            )
        # Power off, then time from power on: how long the harness takes to tear a namespace down is not
        # the node's restart time.
        kube.node.stop()
        start = time.monotonic()
        kube.node.start(link_up=not offline)
        wait_for("10 pods back", lambda: running_containers(kube) >= 10, timeout=300, interval=0.25)
        return round(time.monotonic() - start, 1)


def running_containers(kube: cluster.Cluster) -> int:
    """Application containers (not pod sandboxes) whose task is running, as containerd sees them."""
    ctr = ["ctr", "-n", "k8s.io"]
    apps = set(
        kube.node.run(
            [*ctr, "containers", "ls", "-q", 'labels."io.cri-containerd.kind"==container'], check=False
        ).stdout.split()
    )
    tasks = kube.node.run([*ctr, "tasks", "ls"], check=False).stdout.splitlines()[1:]
    return sum(1 for line in tasks if line.split()[0] in apps and line.split()[-1] == "RUNNING")


def progress(what: str) -> None:
    print(f"yurthub bench: {what}", file=sys.stderr, flush=True)


RESERVED = "reserved_cpu_"
"""The prefix of the figures of the soak run with yurthub on a CPU of its own (`yurthub_soak.Layout`)."""


def run(quick: bool = False) -> dict[str, object]:
    reps = 1 if quick else REPS
    metrics: dict[str, Any] = {}
    stamp = {"commit": machine.commit(), "load_average_1m": {"start": round(os.getloadavg()[0], 2)}}
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as kube, tempfile.TemporaryDirectory() as tmp:
        figures, cloud_lists = side_by_side(kube, Path(tmp), reps)
        progress("cache footprint and RSS")
        figures |= footprint(kube, Path(tmp), reps)
        soak: dict[str, Any] = {"figures": {}, "detail": None}
        reserved: dict[str, Any] = {"figures": {}, "detail": None}
        if not quick:
            # a hub of its own, in a namespace of its own, after the request figures so it cannot disturb them;
            # then again with yurthub and the kubelet-shaped client on a CPU of their own (`--reserved-cpu`)
            progress("hostile soak")
            soak = yurthub_soak.measure(kube, Path(tmp) / "soak")
            progress("hostile soak, yurthub on a CPU of its own")
            reserved = yurthub_soak.measure(kube, Path(tmp) / "soak-reserved", reserved_cpu=True)
    progress("cache events through record_events")
    for enc, key in (
        (wire.Encoding.JSON, "cache_events_per_s"),
        (wire.Encoding.PROTOBUF, "cache_events_per_s_protobuf"),
    ):
        figures[key] = {OURS: figure([cache_events_per_s(cloud_lists[enc], enc) for _ in range(reps)])}
    metrics |= flat(figures)
    metrics["list_1k_pods_online_overhead_ratio"] = ratio(
        metrics["list_1k_pods_online_p50_ms"], metrics["list_1k_pods_direct_p50_ms"]
    )
    metrics |= soak["figures"]
    metrics |= {f"{RESERVED}{key}": value for key, value in reserved["figures"].items()}
    if not quick:
        progress("node restarts")
        metrics["online_node_restart_to_pods_running_s"] = node_restart(offline=False)
        metrics["offline_node_restart_to_pods_running_s"] = node_restart(offline=True)
        metrics["offline_over_online_restart_ratio"] = round(
            metrics["offline_node_restart_to_pods_running_s"] / metrics["online_node_restart_to_pods_running_s"], 3
        )
    stamp["load_average_1m"]["end"] = round(os.getloadavg()[0], 2)  # type: ignore[index]
    return {
        **stamp,
        "metrics": metrics,
        "median": metrics,
        "side_by_side": figures,
        "settings": {
            "repetitions": reps,
            "list_samples_per_repetition": LIST_SAMPLES,
            "get_samples_per_repetition": GET_SAMPLES,
            "watch_events_per_repetition": WATCH_ROUNDS,
            "openyurt": f"yurthub {openyurt_hub.VERSION}, --bootstrap-mode=kubeletcertificate, default heartbeat",
            "yurt_edge": "yurthub " + " ".join(("--cache-agents=kubelet", *OURS_DEFAULTS)),
        },
        "hostile_soak": soak["detail"],
        "hostile_soak_reserved_cpu": reserved["detail"],
    }


if __name__ == "__main__":
    # a short check of the whole side-by-side path (one repetition, no soak, no node restarts); prints, writes
    # nothing under bench/results
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
