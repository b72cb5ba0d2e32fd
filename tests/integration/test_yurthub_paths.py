"""Every path shape kube-apiserver accepts goes through yurthub online with the apiserver's own answer.

Each request is sent twice with the same bytes on the wire (method, raw request target, headers, body, the same
node identity): once straight to the real kube-apiserver, once to yurthub's plain port, which forwards with
the node's certificate (`testenv.hosthub`). The status codes must be equal. The node is granted the
`pods/proxy` and `nodes/proxy` subresources here, so those requests get past authorization and the apiserver
itself resolves them (a missing pod, a node without an address) rather than stopping at 403.

The second table holds what yurthub refuses with 400 although the apiserver answers otherwise, each with why:
the path yurthub classifies must be the path the cloud serves, and names end up in cache keys and log lines.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from testenv import cluster
from tests.integration.conftest import NODE, Hub

KUBELET = "kubelet/v1.34.12 (linux/amd64) kubernetes/test"
MERGE = "application/merge-patch+json"

Send = Callable[[str, str, bytes | None, str], tuple[int, bytes]]


def sender(host: str, port: int, context: ssl.SSLContext | None) -> Send:
    """Send one request with exactly this request target (no client-side normalisation of the path)."""

    def send(method: str, target: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(host, port, context=context, timeout=30)
            if context is not None
            else http.client.HTTPConnection(host, port, timeout=30)
        )
        try:
            headers = {"Accept": "application/json", "User-Agent": KUBELET, "Content-Type": content_type}
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return send


@pytest.fixture(scope="module")
def direct(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Send:
    """Straight to the apiserver with the node identity yurthub uses, granted the proxy subresources."""
    plane = cloud.plane
    assert plane is not None
    cloud.kubectl.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "yurt-test-proxy"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods/proxy", "nodes/proxy"], "verbs": ["get", "create"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "yurt-test-proxy"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "yurt-test-proxy"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}],
            },
        ]
    )
    directory = tmp_path_factory.mktemp("direct")
    cert, key = plane.ca.issue(f"system:node:{NODE}", organizations=("system:nodes",), client=True).write(
        directory, "node"
    )
    context = ssl.create_default_context(cafile=str(plane.directory / "pki" / "ca.crt"))
    context.load_cert_chain(str(cert), str(key))
    host, port = plane.server.removeprefix("https://").rsplit(":", 1)
    return sender(host, int(port), context)


@pytest.fixture(scope="module")
def through(hub: Hub) -> Send:
    host, port = hub.proxy.removeprefix("http://").rsplit(":", 1)
    return sender(host, int(port), None)


STATUS_PATCH = json.dumps({"metadata": {"labels": {"paths-test": "yes"}}}).encode()

SAME = [
    # subresources with any number of trailing segments (refused with 400 before)
    ("GET", "/api/v1/namespaces/default/pods/x/proxy/a/b", None, ""),
    ("POST", "/api/v1/namespaces/default/pods/x/proxy/a/b", b"{}", ""),
    ("GET", "/api/v1/namespaces/default/pods/x/proxy/", None, ""),
    ("GET", "/api/v1/namespaces/default/pods/x/proxy/q%3Fr%23s%25t;u,v!w%20y", None, ""),
    ("GET", f"/api/v1/nodes/{NODE}/proxy/metrics", None, ""),
    ("GET", f"/api/v1/nodes/{NODE}/proxy/stats/summary", None, ""),
    ("GET", "/api/v1/namespaces/default/services/kubernetes:443/proxy/x", None, ""),
    ("GET", "/api/v1/namespaces/default/services/https:kubernetes:443/proxy/x/y", None, ""),
    ("GET", f"/api/v1/proxy/nodes/{NODE}/metrics", None, ""),  # the old proxy/ path verb
    ("GET", "/api/v1/namespaces/default/pods/x/log", None, ""),
    # names with characters the apiserver takes (refused with 400 before)
    ("GET", "/api/v1/namespaces/default/pods/a%20b", None, ""),
    ("GET", "/api/v1/namespaces/default/configmaps/a%25b", None, ""),
    ("GET", "/api/v1/namespaces/default/configmaps/a,b", None, ""),
    # the Namespace object and its subresources
    ("GET", "/api/v1/namespaces/default", None, ""),
    ("GET", "/api/v1/namespaces/default/status", None, ""),
    ("PUT", "/api/v1/namespaces/default/finalize", b"{}", ""),
    ("PUT", "/api/v1/namespaces/default/status", b"{}", ""),
    # resources, verbs from methods
    ("GET", "/api/v1/namespaces", None, ""),
    ("GET", "/api/v1/namespaces/default/configmaps", None, ""),
    (
        "GET",
        "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3Dextension-apiserver-authentication",
        None,
        "",
    ),
    ("GET", f"/api/v1/nodes/{NODE}", None, ""),
    ("GET", f"/api/v1/nodes/{NODE}?watch=true", None, ""),  # a named GET stays a get
    ("HEAD", "/api/v1/namespaces/default/configmaps", None, ""),
    ("PATCH", f"/api/v1/nodes/{NODE}/status", STATUS_PATCH, MERGE),
    ("POST", "/api/v1/namespaces/default/configmaps", b"{}", ""),
    ("DELETE", "/api/v1/namespaces/default/configmaps/x", None, ""),
    ("DELETE", "/api/v1/namespaces/default/configmaps", None, ""),  # deletecollection
    ("OPTIONS", "/api/v1/namespaces/default/configmaps", None, ""),
    ("GET", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", None, ""),
    # watches (ended by their timeout)
    ("GET", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1", None, ""),
    ("GET", "/api/v1/namespaces/default/configmaps?watch=yes&timeoutSeconds=1", None, ""),
    ("GET", "/api/v1/watch/namespaces/default/configmaps?timeoutSeconds=1", None, ""),
    ("GET", f"/api/v1/watch/nodes/{NODE}?timeoutSeconds=1", None, ""),
    (
        "GET",
        f"/api/v1/nodes?watch=true&timeoutSeconds=1&fieldSelector=metadata.name%3D{NODE}",
        None,
        "",
    ),
    # unknown resources, groups and versions
    ("GET", "/api/v1/namespaces/default/widgets", None, ""),
    ("GET", "/apis/example.com/v1/widgets", None, ""),
    ("GET", "/apis/apps/v9/deployments", None, ""),
    # discovery and other non-resource paths
    ("GET", "/", None, ""),
    ("GET", "/api", None, ""),
    ("GET", "/api/v1", None, ""),
    ("GET", "/apis", None, ""),
    ("GET", "/apis/apps", None, ""),
    ("GET", "/apis/apps/v1", None, ""),
    ("GET", "/apis/example.com", None, ""),
    ("GET", "/version", None, ""),
    ("POST", "/version", b"{}", ""),
    ("GET", "/openapi/v2", None, ""),
    ("GET", "/openapi/v3/apis/apps/v1", None, ""),
    ("GET", "/healthz", None, ""),
    ("GET", "/livez/etcd", None, ""),
    ("GET", "/metrics", None, ""),
    # a `%` that starts no escape: Go's HTTP server answers 400 itself, as yurthub does
    ("GET", "/api/v1/namespaces/default/configmaps/x%zz", None, ""),
]


@pytest.mark.parametrize(("method", "path", "body", "content_type"), SAME)
def test_yurthub_answers_with_the_apiservers_status(
    direct: Send, through: Send, method: str, path: str, body: bytes | None, content_type: str
) -> None:
    want, want_body = direct(method, path, body, content_type or "application/json")
    got, got_body = through(method, path, body, content_type or "application/json")
    assert got == want, (got_body[:300], want_body[:300])


REFUSED = [
    # (path, what the apiserver answers, why yurthub refuses). yurthub forwards with an HTTP client that
    # normalises `.` and `..` (`a/../b` is sent as `b`), so such a path would reach the cloud as another path
    # than the one yurthub classified and caches under.
    ("/api/v1/namespaces/default/configmaps/..", 400, "the apiserver refuses `..` as a name too"),
    ("/api/v1/namespaces/default/configmaps/%2e%2e", 400, "an encoded `..` is `..` once decoded"),
    (
        "/api/v1/namespaces/../configmaps",
        200,
        "the apiserver lists a namespace called `..`; forwarded, it would list every namespace's ConfigMaps "
        "and yurthub would cache them as namespace `..`",
    ),
    (
        "/api/v1/namespaces/default/pods/x/proxy/../../../configmaps",
        404,
        "the apiserver proxies to pod x (missing); forwarded, it would be a ConfigMap list classified as a proxy",
    ),
    (
        "/api/v1/namespaces/default%2Fother/configmaps",
        403,
        "the apiserver decodes the slash and reads namespace default, resource other: the segments move",
    ),
    ("/api/v1/namespaces/default/pods/x/proxy/a%2Fb", 404, "an encoded slash moves the segment boundaries"),
    ("/api/v1/namespaces/default/configmaps/a%5Cb", 404, "a backslash is a path separator to some servers"),
    ("/api/v1//configmaps", 403, "an empty segment shifts every segment after it: one path, two readings"),
    ("/api/v1/namespaces/default/configmaps/x%0dforged=1", 404, "a control character would forge log lines"),
    ("/api/v1/namespaces/default/configmaps/x%00", 404, "a control character would forge log lines"),
    ("/api/v1/namespaces/default/configmaps/x%0aforged=1", 404, "a newline would forge log lines"),
    ("/api/v1/namespaces/default/configmaps/%ff", 404, "two byte strings that are not UTF-8 would meet in one key"),
    ("/api/v1/namespaces/default/configmaps/" + "a" * 254, 404, "longer than any Kubernetes name can be"),
    ("/api/v1/watch", 500, "a path verb with nothing to watch: the apiserver fails to classify it too"),
]


@pytest.mark.parametrize(("path", "apiserver", "why"), REFUSED)
def test_yurthub_refuses_paths_that_could_escape_what_it_classified(
    direct: Send, through: Send, path: str, apiserver: int, why: str
) -> None:
    code, body = through("GET", path, None, "application/json")
    assert code == 400, why
    status = json.loads(body)
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 400, "BadRequest")
    assert direct("GET", path, None, "application/json")[0] == apiserver, why
