"""yurthub in front of the real kube-apiserver under slow, privileged and oversized requests.

- One request the cloud is slow to answer (an admission webhook that stalls) gets a 504 `Status`; the cloud
  stays reachable, an open watch goes on and other requests are forwarded.
- A request on the plain port that carries its own token is cached under that token's scope: offline, a
  plain request naming the same component does not read what the token fetched.
- A body past the node-wide memory budget gets 429 with `Retry-After`.
- With the `other` class at its limit in flight (one request stalled by the webhook), another `other` request
  gets 429 with `Retry-After` at once while kubelet's requests are answered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from testenv import cluster, controlplane, pki, relay
from testenv.kubectl import wait_for
from tests.integration.conftest import NODE, Hub, start_hub, stop_hub, wait_cloud

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/test"
NS = "bounds"


def call(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    token: str | None = None,
    timeout: float = 20,
    agent: str = KUBELET,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": "application/json", "User-Agent": agent, "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def bounds(cloud: cluster.Cluster) -> None:
    """Namespace `bounds`: the node may write ConfigMaps there; ServiceAccount `reader` may read its Secrets
    (which the node may not)."""
    node_user = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}
    cloud.kubectl.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": NS}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-secrets", "namespace": NS},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "read-secrets", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "write-configmaps", "namespace": NS},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "list", "watch"]}
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "write-configmaps", "namespace": NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "write-configmaps"},
                "subjects": [node_user],
            },
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "only-for-reader", "namespace": NS}},
        ]
    )


def configmap(name: str, labels: dict[str, str] | None = None) -> bytes:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {}}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}).encode()


@pytest.fixture
def slow_webhook(cloud: cluster.Cluster, tmp_path: Path, bounds: None) -> Iterator[threading.Event]:
    """A validating webhook for ConfigMaps labelled `slow=yes` that answers only when the test lets it."""
    release = threading.Event()
    ca = pki.CertificateAuthority("webhook-ca")
    ca_crt, _ = ca.pair.write(tmp_path, "webhook-ca")
    crt, key = ca.issue("webhook", server=True, ip_addresses=("127.0.0.1",)).write(tmp_path, "webhook")

    async def review(request: web.Request) -> web.Response:
        doc = await request.json()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 25)
        answer = {"uid": doc["request"]["uid"], "allowed": True}
        return web.json_response({"apiVersion": doc["apiVersion"], "kind": "AdmissionReview", "response": answer})

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(crt), str(key))
    app = web.Application()
    app.router.add_post("/validate", review)
    port = controlplane.free_port()
    ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start())
        loops.append(loop)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    hook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "yurt-test-slow"},
        "webhooks": [
            {
                "name": "slow.yurt-test.example.com",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate",
                    "caBundle": base64.b64encode(Path(ca_crt).read_bytes()).decode(),
                },
                "rules": [
                    {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}
                ],
                "objectSelector": {"matchLabels": {"slow": "yes"}},
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 20,
            }
        ],
    }
    cloud.kubectl.apply([hook])
    try:
        yield release
    finally:
        release.set()
        cloud.kubectl.run("delete", "validatingwebhookconfiguration", "yurt-test-slow", "--ignore-not-found")
        loops[0].call_soon_threadsafe(loops[0].stop)
        thread.join(5)


def test_one_slow_request_gets_504_and_the_node_stays_online(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path, slow_webhook: threading.Event
) -> None:
    hub = start_hub(cloud, link, tmp_path / "hub", "--request-timeout-seconds=2")
    configmaps = f"/api/v1/namespaces/{NS}/configmaps"
    events: list[bytes] = []

    def watch() -> None:
        request = urllib.request.Request(
            hub.proxy + configmaps + "?watch=true&timeoutSeconds=60",
            headers={"Accept": "application/json", "User-Agent": KUBELET},
        )
        with urllib.request.urlopen(request, timeout=70) as resp:
            for line in resp:
                events.append(line)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        wait_for("the cloud", lambda: call(hub.proxy + configmaps)[0] == 200, timeout=30)
        watcher.start()
        code, _, body = call(hub.proxy + configmaps, method="POST", body=configmap("slow", {"slow": "yes"}))
        doc = json.loads(body)
        assert (code, doc["kind"], doc["reason"]) == (504, "Status", "Timeout"), body
        assert hub.status()["cloud"]["reachable"] is True
        code, _, body = call(hub.proxy + configmaps, method="POST", body=configmap("fast"))
        assert code == 201, body
        wait_for("the open watch to see the next ConfigMap", lambda: any(b'"fast"' in e for e in events), timeout=20)
        assert watcher.is_alive()
        assert "cloud unreachable" not in hub.log.read_text()
    finally:
        slow_webhook.set()
        stop_hub(hub)


def test_a_token_on_the_plain_port_is_cached_under_its_own_scope(
    cloud: cluster.Cluster, link: relay.Relay, hub: Hub, bounds: None
) -> None:
    token = cloud.kubectl.run("create", "token", "reader", "-n", NS, "--duration=1h").strip()
    secrets = f"/api/v1/namespaces/{NS}/secrets"
    code, _, with_token = call(hub.proxy + secrets, token=token)
    assert code == 200 and b"only-for-reader" in with_token
    assert call(hub.proxy + secrets)[0] == 403  # the node itself may not read them
    link.cut()
    try:
        wait_cloud(hub, reachable=False)
        code, _, body = call(hub.proxy + secrets)  # any local process can say it is kubelet
        assert code == 503 and b"only-for-reader" not in body, body
        code, _, body = call(hub.proxy + secrets, token=token)  # the token reads what it fetched
        assert (code, body) == (200, with_token)
    finally:
        link.restore()
        wait_cloud(hub, reachable=True)


def test_a_body_past_the_memory_budget_gets_429_with_retry_after(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path, bounds: None
) -> None:
    hub = start_hub(cloud, link, tmp_path / "hub", "--max-bytes-in-memory=65536")
    try:
        configmaps = f"/api/v1/namespaces/{NS}/configmaps"
        code, _, _ = call(hub.proxy + configmaps, method="POST", body=configmap("small"))
        assert code == 201
        big = json.loads(configmap("big"))
        big["data"]["k"] = "x" * 100_000
        code, headers, body = call(hub.proxy + configmaps, method="POST", body=json.dumps(big).encode())
        assert code == 429 and headers["Retry-After"] == "1", body
        assert json.loads(body)["reason"] == "TooManyRequests"
        assert call(hub.proxy + configmaps + "/big")[0] == 404  # it never reached the cloud
    finally:
        stop_hub(hub)


def test_past_the_other_limit_a_second_request_gets_429_while_kubelet_is_answered(
    cloud: cluster.Cluster, link: relay.Relay, tmp_path: Path, slow_webhook: threading.Event
) -> None:
    hub = start_hub(cloud, link, tmp_path / "hub", "--max-inflight-other=1", "--request-timeout-seconds=30")
    configmaps = f"/api/v1/namespaces/{NS}/configmaps"
    other = "monitoring-agent/1.0"
    slow: list[int] = []

    def stalled() -> None:
        slow.append(
            call(hub.proxy + configmaps, method="POST", body=configmap("held", {"slow": "yes"}), agent=other)[0]
        )

    holder = threading.Thread(target=stalled, daemon=True)
    try:
        wait_for("the cloud", lambda: call(hub.proxy + configmaps)[0] == 200, timeout=30)
        holder.start()
        wait_for(
            "the stalled request to hold the other class's only seat",
            lambda: hub.status()["limits"]["inflight"]["now"]["other"] == 1,
            timeout=20,
            interval=0.1,
        )
        code, headers, body = call(hub.proxy + configmaps + "/held", agent=other)
        doc = json.loads(body)
        assert (code, headers.get("Retry-After"), doc["kind"], doc["reason"]) == (
            429,
            "1",
            "Status",
            "TooManyRequests",
        ), body
        code, _, body = call(hub.proxy + configmaps)  # kubelet, no token of its own: the node's class
        assert code == 200, body
        code, _, body = call(hub.proxy + f"/api/v1/nodes/{NODE}")
        assert code in (200, 404), body  # the cloud's answer (this Node may not be registered), not a 429
        assert holder.is_alive()  # the slow one is still held: kubelet went past it
    finally:
        slow_webhook.set()
        holder.join(30)
        stop_hub(hub)
    assert slow == [201]
