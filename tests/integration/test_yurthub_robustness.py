"""yurthub under failures and bad input: failover, custom resources, garbage from upstream, a client hanging
up mid-list, huge headers, a full disk, kill -9 in the middle of writes (repeatedly), secrets kept out of its
log, and the join token kept off the process list."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from testenv import cluster, controlplane, pki, relay
from testenv.kubectl import wait_for
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud
from tests.integration.test_yurthub_proxy import KUBELET, PB, call, services


def test_failover_to_the_second_server_keeps_the_cloud_online(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    port = int(cloud.plane.server.rsplit(":", 1)[1])  # type: ignore[union-attr]
    second = relay.Relay("127.0.0.1", port)
    hub = start_hub(
        cloud, link, tmp_path, f"--server-addr=https://127.0.0.1:{link.port},https://127.0.0.1:{second.port}"
    )
    try:
        link.cut()
        wait_for("the first server to be marked down", lambda: not hub.status()["servers"][0]["healthy"], timeout=30)
        assert hub.status()["cloud"]["reachable"]
        services(cloud, "after-failover")
        code, _, body = call(hub.proxy + "/api/v1/namespaces/default/services")
        assert code == 200 and b"after-failover" in body  # fresh from the cloud, not the cache
    finally:
        link.restore()
        stop_hub(hub)
        second.close()


def test_custom_resources_are_cached_like_built_in_kinds(cloud: cluster.Cluster, link: relay.Relay, hub: Hub) -> None:
    cloud.kubectl.apply(
        [
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "widgets.example.com"},
                "spec": {
                    "group": "example.com",
                    "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    ],
                },
            }
        ]
    )
    wait_for(
        "the Widget API", lambda: "widgets" in cloud.kubectl.run("api-resources", "--api-group=example.com"), timeout=30
    )
    cloud.kubectl.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "widget-reader"},
                "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "widget-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "widget-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}],
            },
        ]
    )
    cloud.kubectl.apply(
        [
            {
                "apiVersion": "example.com/v1",
                "kind": "Widget",
                "metadata": {"name": f"w{i}", "namespace": "default"},
                "spec": {"size": i},
            }
            for i in range(3)
        ]
    )
    paths = ["/apis/example.com/v1/namespaces/default/widgets", "/apis/example.com/v1/namespaces/default/widgets/w1"]
    online = {p: call(hub.proxy + p) for p in paths}
    assert all(v[0] == 200 for v in online.values())
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        for path, want in online.items():
            assert call(hub.proxy + path) == want
    finally:
        link.restore()
        wait_cloud(hub, reachable=True)


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.contextmanager
def hostile_cloud(directory: Path, answer: Answer) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on its own thread and loop whose answers to API requests `answer` makes (/readyz: OK)."""
    ca = pki.CertificateAuthority("hostile-ca")
    ca_crt, _ = ca.pair.write(directory, "ca")
    crt, key = ca.issue("hostile", server=True, ip_addresses=("127.0.0.1",)).write(directory, "server")

    async def route(request: web.Request) -> web.StreamResponse:
        if request.path == "/readyz":
            return web.Response(text="ok")
        return await answer(request)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    port = controlplane.free_port()
    ready = threading.Event()
    loop_holder: dict[str, object] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start())
        loop_holder["loop"] = loop
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"https://127.0.0.1:{port}", ca_crt
    finally:
        loop = loop_holder["loop"]
        loop.call_soon_threadsafe(loop.stop)  # type: ignore[attr-defined]
        thread.join(5)


@pytest.fixture
def garbage_cloud(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Answers API reads with truncated or garbage bodies."""
    bodies = {
        "/api/v1/namespaces/default/services": (
            b'{"kind":"ServiceList","apiVersion":"v1","items":[{"metadata":',
            "application/json",
        ),
        "/api/v1/namespaces/default/pods": (b"k8s\x00\x0a\xff\xff\xff\xff\x0f", "application/vnd.kubernetes.protobuf"),
        "/api/v1/namespaces/default/configmaps": (os.urandom(4096), "application/json"),
    }

    async def answer(request: web.Request) -> web.Response:
        body, ctype = bodies.get(request.path, (b"{}", "application/json"))
        if "watch" in request.query:
            return web.Response(body=body + b"\n" + os.urandom(64), headers={"Content-Type": ctype + ";stream=watch"})
        return web.Response(body=body, headers={"Content-Type": ctype})

    with hostile_cloud(tmp_path, answer) as found:
        yield found


def test_garbage_from_upstream_is_relayed_but_never_cached_and_never_crashes(
    cloud: cluster.Cluster, link: relay.Relay, garbage_cloud: tuple[str, Path], tmp_path: Path
) -> None:
    url, ca = garbage_cloud
    hub = start_hub(cloud, link, tmp_path, f"--server-addr={url}", f"--ca-file={ca}")
    try:
        for path, agent, want in (
            ("/api/v1/namespaces/default/services", KUBELET, 200),
            ("/api/v1/namespaces/default/pods", "kube-proxy/v1.34.12", 200),
            # kubelet's pods are asked for as JSON (yurthub rewrites them offline): a cloud answering anything
            # else is a bad gateway, answered with a Status, never relayed as if it were JSON
            ("/api/v1/namespaces/default/pods", KUBELET, 502),
            ("/api/v1/namespaces/default/configmaps", KUBELET, 200),
            ("/api/v1/namespaces/default/services?watch=1", KUBELET, 200),
        ):
            code, ctype, body = call(hub.proxy + path, accept=PB, agent=agent)
            assert code == want, (path, agent)
            if want == 502:
                assert ctype.startswith("application/json") and json.loads(body)["kind"] == "Status"
        assert hub.proc.poll() is None
        assert hub.status()["cache"]["entries"] == []
        wait_for(
            "the malformed bodies to be counted",
            lambda: 'yurthub_cache_write_errors_total{reason="malformed"}' in hub.metrics(),
            timeout=10,
        )
    finally:
        stop_hub(hub)


SERVICES = "/api/v1/namespaces/default/services"


def service_list(count: int) -> bytes:
    items = [
        {"metadata": {"name": f"s{i}", "namespace": "default", "resourceVersion": "7", "uid": f"u{i}"}, "spec": {}}
        for i in range(count)
    ]
    return json.dumps(
        {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items}
    ).encode()


def test_a_client_hanging_up_mid_list_leaves_nothing_cached_and_no_traceback(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    body = service_list(2000)
    half = len(body) // 2
    go_on = threading.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        """The list in two halves: the second when the test says, in small pieces, as a slow cloud sends."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(body[:half])
        await asyncio.get_running_loop().run_in_executor(None, go_on.wait, 30)
        for at in range(half, len(body), 4096):
            await response.write(body[at : at + 4096])
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    with hostile_cloud(tmp_path, answer) as (url, ca):
        hub = start_hub(cloud, link, tmp_path / "hub", f"--server-addr={url}", f"--ca-file={ca}", "--verbose")
        try:
            with socket.create_connection(("127.0.0.1", int(hub.proxy.rsplit(":", 1)[1])), timeout=10) as client:
                client.sendall(
                    f"GET {SERVICES} HTTP/1.1\r\nHost: yurthub\r\nUser-Agent: kubelet/v1.34\r\n"
                    "Accept: application/json\r\n\r\n".encode()
                )
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
            go_on.set()  # the client hung up holding half a list; now the cloud sends the rest
            wait_for("yurthub to notice", lambda: "client went away" in hub.log.read_text(), timeout=30)
            assert hub.status()["cache"]["entries"] == []
            # the same list read whole is kept: the empty cache above was the hang-up, not the answer
            code, _, got = call(hub.proxy + SERVICES)
            assert (code, got) == (200, body)
            wait_for("the whole list to be kept", lambda: hub.status()["cache"]["entries"] != [], timeout=10)
            assert hub.proc.poll() is None
        finally:
            stop_hub(hub)
    text = hub.log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "upstream stream ended early" not in text


def test_huge_headers_get_a_status_error(hub: Hub) -> None:
    code, ctype, body = call(hub.proxy + "/api/v1/namespaces/default/services", agent="kubelet/" + "x" * 20000)
    assert (code, ctype) == (431, "application/json")
    assert json.loads(body)["kind"] == "Status"
    assert hub.proc.poll() is None


def test_a_full_disk_keeps_the_proxy_working_and_says_so(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], check=True)
    try:
        hub = start_hub(cloud, link, tmp_path, f"--disk-cache-path={disk / 'cache'}")
        try:
            cloud.kubectl.apply(
                [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": f"big-{i}", "namespace": "default"},
                        "data": {"blob": secrets.token_hex(20000)},
                    }
                    for i in range(30)
                ]
            )
            code, _, body = call(hub.proxy + "/api/v1/namespaces/default/configmaps")
            assert code == 200 and body.count(b'"big-') == 30  # the online answer is whole
            wait_for(
                "the cache to report it cannot write", lambda: "yurthub_cache_writable 0.0" in hub.metrics(), timeout=10
            )
            assert hub.status()["cache"]["writable"] is False
            code, _, _ = call(hub.proxy + "/api/v1/namespaces/default/services")
            assert code == 200
        finally:
            stop_hub(hub)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


CHURN_NS = "churn"
CHURN = f"/api/v1/namespaces/{CHURN_NS}/configmaps"
CHURN_LIST = f"{CHURN}?labelSelector=churn%3Dyes"
KILL_ROUNDS = 5


class Churn:
    """ConfigMaps created (cm-0, cm-1, ... in that order) and updated in the cloud, straight at the apiserver
    with an admin identity; every (name, resourceVersion) written is remembered with its data."""

    def __init__(self, cloud: cluster.Cluster, directory: Path) -> None:
        plane = cloud.plane
        assert plane is not None
        cert, key = plane.ca.issue("yurt-test-admin", organizations=("system:masters",), client=True).write(
            directory, "admin"
        )
        self.context = ssl.create_default_context(cafile=str(plane.directory / "pki" / "ca.crt"))
        self.context.load_cert_chain(str(cert), str(key))
        self.server = plane.server
        self.written: dict[tuple[str, str], dict[str, str]] = {}
        self.created = 0
        self.last_rv = 0

    def _send(self, method: str, path: str, body: dict[str, object], ctype: str) -> None:
        request = urllib.request.Request(
            self.server + path, data=json.dumps(body).encode(), method=method, headers={"Content-Type": ctype}
        )
        with urllib.request.urlopen(request, timeout=10, context=self.context) as resp:
            got = json.loads(resp.read())
        meta = got["metadata"]
        self.written[(meta["name"], meta["resourceVersion"])] = got.get("data") or {}
        self.last_rv = max(self.last_rv, int(meta["resourceVersion"]))

    def step(self, turn: int) -> None:
        """One creation and one update of an earlier ConfigMap."""
        name = f"cm-{self.created}"
        meta = {"name": name, "labels": {"churn": "yes"}}
        self._send("POST", CHURN, {"metadata": meta, "data": {"turn": str(turn)}}, "application/json")
        self.created += 1
        patch = {"data": {"turn": str(turn), "touched": "yes"}}
        self._send("PATCH", f"{CHURN}/cm-{turn % self.created}", patch, "application/merge-patch+json")


def cache_files(directory: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under the cache directory: what moves when the cache writer commits."""
    found: dict[str, tuple[int, int]] = {}
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            st = path.stat()
            found[str(path)] = (st.st_size, st.st_mtime_ns)
    return found


def kill_during_writes(cloud: cluster.Cluster, link: relay.Relay, hub_dir: Path, churn: Churn) -> tuple[int, bytes]:
    """Start yurthub, keep the cloud changing while a client lists and watches through it, kill -9 it
    while its cache files are changing, restart it offline and return its answer to the list."""
    hub = start_hub(cloud, link, hub_dir)
    wait_cloud(hub, reachable=True)  # a restarted yurthub with a cache starts offline until a probe succeeds
    stop = threading.Event()
    lists_served = [0]
    code, _, body = call(hub.proxy + CHURN_LIST)
    assert code == 200
    rv = json.loads(body)["metadata"]["resourceVersion"]

    def writer() -> None:
        turn = 1
        while not stop.is_set():
            churn.step(turn)
            turn += 1

    def lister() -> None:
        while not stop.is_set():
            try:
                if call(hub.proxy + CHURN_LIST, timeout=5)[0] == 200:
                    lists_served[0] += 1
            except (OSError, http.client.HTTPException):
                return  # yurthub was killed

    def watcher() -> None:
        url = f"{hub.proxy}{CHURN_LIST}&watch=1&resourceVersion={rv}&timeoutSeconds=60"
        request = urllib.request.Request(url, headers={"User-Agent": "kubelet/v1.34 (linux/amd64)"})
        with (
            contextlib.suppress(OSError, http.client.HTTPException),
            urllib.request.urlopen(request, timeout=60) as stream,
        ):
            for _ in iter(stream.readline, b""):
                if stop.is_set():
                    return

    threads = [threading.Thread(target=f, daemon=True) for f in (writer, lister, watcher)]
    for t in threads:
        t.start()
    try:
        wait_for("lists to be served while the cloud changes", lambda: lists_served[0] >= 3, timeout=30)
        # the evidence that the kill lands while the cache writer works: its files are changing right now
        before = cache_files(hub.cache)
        wait_for("the cache files to change", lambda: cache_files(hub.cache) != before, timeout=10, interval=0.02)
        os.kill(hub.proc.pid, signal.SIGKILL)
        hub.proc.wait()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    link.cut()
    try:
        again = start_hub(cloud, link, hub_dir)
        try:
            wait_cloud(again, reachable=False)
            code, _, body = call(again.proxy + CHURN_LIST)
        finally:
            stop_hub(again)
    finally:
        link.restore()
    return code, body


def test_kill_9_during_writes_repeatedly_leaves_whole_lists_and_resource_versions_never_go_back(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    cloud.kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHURN_NS}}])
    churn = Churn(cloud, tmp_path)
    churn.step(0)
    previous: dict[str, int] = {}
    for round_ in range(KILL_ROUNDS):
        code, body = kill_during_writes(cloud, link, tmp_path / "hub", churn)
        assert code == 200, (round_, body[:300])
        items = json.loads(body)["items"]  # parses: no torn write
        names = [i["metadata"]["name"] for i in items]
        assert len(names) == len(set(names)), f"round {round_}: duplicates"
        # ConfigMaps are created one after the other, so the cloud's list at any resourceVersion is a prefix
        # cm-0 ... cm-<n-1>: a gap is a set the cloud never had (not just a count that happens to match)
        highest = max(int(n[3:]) for n in names)
        missing = sorted(set(range(highest + 1)) - {int(n[3:]) for n in names})
        assert missing == [], (
            f"round {round_}: offline list (resourceVersion {json.loads(body)['metadata']['resourceVersion']}) "
            f"has cm-{highest} but lacks {[f'cm-{m}' for m in missing[:10]]}; resourceVersions the cloud gave "
            f"them: {sorted((n, rv) for n, rv in churn.written if n in {f'cm-{m}' for m in missing[:3]})[:6]}"
        )
        assert 0 < len(names) <= churn.created
        now: dict[str, int] = {}
        for item in items:
            key = (item["metadata"]["name"], item["metadata"]["resourceVersion"])
            assert key in churn.written, f"round {round_}: {key} was never written by the cloud"
            assert (item.get("data") or {}) == churn.written[key]
            now[key[0]] = int(key[1])
        assert max(now.values()) <= churn.last_rv
        went_back = {n: (rv_, now.get(n)) for n, rv_ in previous.items() if now.get(n, -1) < rv_}
        assert went_back == {}, f"round {round_}: resourceVersions went backwards (or objects vanished)"
        previous = now


def test_tokens_and_keys_never_reach_the_log(cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path) -> None:
    hub = start_hub(cloud, link, tmp_path, "--verbose")
    try:
        token = "yurt-secret-" + secrets.token_hex(16)
        request = urllib.request.Request(
            hub.proxy + "/api/v1/namespaces/default/pods", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("an unknown bearer token was accepted")
        except urllib.error.HTTPError as err:
            code, answer = err.code, json.loads(err.read())
        assert code == 401 and answer["kind"] == "Status"  # forwarded with the token, refused by the apiserver
        link.cut()
        wait_cloud(hub, reachable=False)
        link.restore()
        wait_cloud(hub, reachable=True)
    finally:
        stop_hub(hub)
    text = hub.log.read_text()
    assert "cloud unreachable" in text  # the log is being written
    assert token not in text
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text


def test_the_join_token_file_keeps_the_token_off_the_process_list(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    """The attack: any local user reads /proc/<pid>/cmdline of every process. With --join-token-file the
    token is not there (nor in the environment, nor in the log); --join-token still works, with a warning."""
    plane = cloud.plane
    assert plane is not None
    token_file = tmp_path / "join-token"
    fd = os.open(token_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, plane.bootstrap_token.encode() + b"\n")
    os.close(fd)
    root = tmp_path / "root"
    hub = start_hub(
        cloud, link, root, f"--join-token-file={token_file}", f"--root-dir={root}", "--csr-poll-seconds=0.5"
    )
    try:
        client = hub.status()["certificates"]["client"]  # serving means the CSR made with the token was issued
        assert client["source"] == "csr" and client["subject"] == f"CN=system:node:{NODE},O=system:nodes"
        cmdline = Path(f"/proc/{hub.proc.pid}/cmdline").read_bytes()
        assert str(token_file).encode() in cmdline  # the right process
        assert plane.bootstrap_token.encode() not in cmdline
        assert plane.bootstrap_token.split(".")[1].encode() not in cmdline
        assert plane.bootstrap_token.encode() not in Path(f"/proc/{hub.proc.pid}/environ").read_bytes()
    finally:
        stop_hub(hub)
    assert plane.bootstrap_token not in hub.log.read_text()
    assert "--join-token:" not in hub.log.read_text()

    other = tmp_path / "by-flag"
    hub = start_hub(cloud, link, other, f"--join-token={plane.bootstrap_token}", f"--root-dir={other}")
    try:
        assert hub.status()["certificates"]["client"]["source"] == "csr"
        assert plane.bootstrap_token.encode() in Path(f"/proc/{hub.proc.pid}/cmdline").read_bytes()  # the attack
    finally:
        stop_hub(hub)
    text = hub.log.read_text()
    assert "every user of this machine can read it in the process list" in text
    assert plane.bootstrap_token not in text


def test_a_rotated_client_certificate_is_used_for_new_requests_without_cutting_open_watches(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path
) -> None:
    hub = start_hub(cloud, link, tmp_path)
    try:
        path = "/api/v1/namespaces/default/configmaps"
        assert call(hub.proxy + path)[0] == 200  # the node identity may read them (view)
        events: list[bytes] = []
        watch = urllib.request.urlopen(
            urllib.request.Request(
                hub.proxy + "/api/v1/namespaces/default/services?watch=1&resourceVersion=0&timeoutSeconds=15",
                headers={"User-Agent": "kubelet/test"},
            ),
            timeout=60,
        )
        reader = threading.Thread(target=lambda: events.extend(iter(watch.readline, b"")), daemon=True)
        reader.start()
        # kubelet's way: a new file, then the symlink swung over to it; here the files are replaced in place
        plane = cloud.plane
        assert plane is not None
        rotated = plane.ca.issue("system:node:yurt-rotated", organizations=("system:nodes",), client=True)
        hub.cert.write_bytes(rotated.cert_pem)
        hub.key.write_bytes(rotated.key_pem)
        wait_for(
            "requests to go out with the rotated identity (which may not read ConfigMaps)",
            lambda: call(hub.proxy + path)[0] == 403,
            timeout=20,
        )
        services(cloud, "after-rotation")
        wait_for(
            "the watch opened before the rotation to see the new Service",
            lambda: any(b"after-rotation" in e for e in events),
            timeout=20,
        )
        assert reader.is_alive()  # the same stream, not a reconnect
        reader.join(30)  # the apiserver ends it at timeoutSeconds
        watch.close()
    finally:
        stop_hub(hub)
