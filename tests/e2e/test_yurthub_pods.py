"""A real pod on the edge node reaches the API through yurthub's HTTPS door with its own token, online and offline.

kubelet goes through yurthub, so the `masterservice` filter gives it the `default/kubernetes` Service at the
door (169.254.2.1:10268), and the pod's in-cluster environment (`KUBERNETES_SERVICE_HOST/PORT`) points there.
The door's serving certificate is one an operator would supply: signed by the cluster CA, with the names a
pod uses. The pod is busybox: its `wget` carries the pod's service-account token.

busybox's `wget` and TLS, measured: without `--no-check-certificate` it hands TLS to an `openssl` binary the
image does not have, and fails; with it, it uses its own TLS code, which validates no certificate, speaks only
TLS 1.2 with RSA keys, and offers no signature algorithm but SHA-1, which OpenSSL 3 refuses at its default
security level. So the pod passes `--no-check-certificate`, the door gets an RSA certificate and the
operator's knob `--secure-tls-ciphers=DEFAULT:@SECLEVEL=0` (a concession to busybox, not a default), and the
certificate is validated separately from the node, with the cluster CA, for every name a pod may use.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from testenv import cluster, hubinstall, images
from testenv.kubectl import node_ready, wait_for

NODE = "edge-1"
DOOR_IP, DOOR_PORT = "169.254.2.1", 10268
DOOR = f"{DOOR_IP}:{DOOR_PORT}"
PKI = "/var/lib/yurthub/pki"
HUB_ARGS = (
    "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1 "
    f"--secure-cert-file={PKI}/yurthub-server.crt --secure-key-file={PKI}/yurthub-server.key "
    "--secure-tls-ciphers=DEFAULT:@SECLEVEL=0"  # busybox's TLS: SHA-1 signatures only (module docstring)
)
POD_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
_exec_ids = itertools.count()


@pytest.fixture(scope="module")
def edge(kube: cluster.Cluster) -> Iterator[cluster.Cluster]:
    assert kube.plane is not None
    serving = kube.plane.ca.issue(
        f"system:node:{NODE}",
        organizations=("system:nodes",),
        server=True,
        ip_addresses=(DOOR_IP,),
        dns_names=POD_NAMES,
        rsa_key=True,  # busybox's TLS knows no ECDSA
    )
    hubinstall.write(kube.node, f"{PKI}/yurthub-server.crt", serving.cert_pem.decode())
    hubinstall.write(kube.node, f"{PKI}/yurthub-server.key", serving.key_pem.decode())
    kube.node.run(["chmod", "-R", "go-rwx", PKI])
    hubinstall.put_behind_yurthub(kube.node, server=kube.plane.cloud_server, extra_args=HUB_ARGS)
    wait_for("the node to be Ready through yurthub", lambda: node_ready(kube.kubectl.get("node", NODE)), timeout=90)
    kube.kubectl.apply(team_objects())
    wait_for("the reader pod to run", lambda: container_of(kube, "reader") is not None, timeout=120)
    yield kube


def team_objects() -> list[dict[str, Any]]:
    """Namespace `team`: a ServiceAccount that may read its ConfigMaps and nothing else, and a pod using it."""
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": "team"}},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": {"name": "read-configmaps", "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "read-configmaps", "namespace": "team"},
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "team"}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": "team"}, "data": {"a": "1"}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "namespace": "team"},
            "stringData": {"k": "v"},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "reader", "namespace": "team"},
            "spec": {
                "nodeName": NODE,
                "serviceAccountName": "reader",
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": images.BUSYBOX_IMAGE, "command": ["sleep", "100000"]}],
            },
        },
    ]


def container_of(kube: cluster.Cluster, pod: str) -> str | None:
    """The running container of `pod`'s `main`, as containerd on the node sees it."""
    for line in kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"]).stdout.splitlines()[1:]:
        cid, *_rest, state = line.split()
        if state != "RUNNING":
            continue
        info = json.loads(kube.node.run(["ctr", "-n", "k8s.io", "containers", "info", cid]).stdout)
        labels = info.get("Labels") or {}
        if labels.get("io.kubernetes.pod.name") == pod and labels.get("io.kubernetes.container.name") == "main":
            return cid
    return None


def in_pod(kube: cluster.Cluster, script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script inside the pod's container, with the container's own environment."""
    cid = container_of(kube, "reader")
    assert cid is not None, "the reader pod's container is not running"
    argv = ["ctr", "-n", "k8s.io", "tasks", "exec", "--exec-id", f"t{next(_exec_ids)}", cid, "sh", "-c", script]
    return kube.node.run(argv, check=False, timeout=60)


def pod_get(kube: cluster.Cluster, path: str) -> subprocess.CompletedProcess[str]:
    """What the pod gets for `path` through its in-cluster configuration, with its own token."""
    return in_pod(
        kube,
        'wget -q -O - --no-check-certificate --header "Authorization: Bearer '
        '$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" '
        f'"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT{path}"',
    )


CONFIGMAPS = "/api/v1/namespaces/team/configmaps"
BEYOND = ("/api/v1/namespaces/team/secrets", "/api/v1/namespaces/default/configmaps", "/api/v1/nodes")


def diagnose(kube: cluster.Cluster) -> str:
    """What a failed request through the door leaves to read: yurthub's log and the pod's network."""
    cid = container_of(kube, "reader") or ""
    pid = next(
        (
            ln.split()[1]
            for ln in kube.node.run(["ctr", "-n", "k8s.io", "tasks", "ls"]).stdout.splitlines()
            if cid in ln
        ),
        "",
    )
    parts = [
        kube.node.journal("yurthub", 40),
        kube.node.run(["ss", "-ltnp"], check=False).stdout,
        kube.node.run(["ip", "-o", "addr"], check=False).stdout,
    ]
    if pid:
        parts += [kube.node.run(["nsenter", "-t", pid, "-n", "ip", "-o", "route"], check=False).stdout]
        parts += [kube.node.run(["nsenter", "-t", pid, "-n", "ip", "-o", "addr"], check=False).stdout]
    return "\n".join(parts)


def listed_names(result: subprocess.CompletedProcess[str], kube: cluster.Cluster | None = None) -> list[str]:
    assert result.returncode == 0, result.stderr + (diagnose(kube) if kube is not None else "")
    return sorted(i["metadata"]["name"] for i in json.loads(result.stdout)["items"])


def test_the_pods_in_cluster_config_points_at_yurthubs_door(edge: cluster.Cluster) -> None:
    env = in_pod(edge, 'echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"').stdout.strip()
    assert env == DOOR, "kubelet saw the masterservice-filtered kubernetes Service"
    real = edge.kubectl.get("service", "kubernetes", "-n", "default")
    assert real["spec"]["clusterIP"] != DOOR_IP, "the cloud's Service itself is untouched"
    for name in (DOOR_IP, *POD_NAMES):
        check = (
            "import socket,ssl;c=ssl.create_default_context(cafile='/etc/kubernetes/pki/ca.crt');"
            f"s=c.wrap_socket(socket.create_connection(('{DOOR_IP}',{DOOR_PORT}),timeout=10),server_hostname='{name}');"
            "print(s.version())"
        )
        out = edge.node.run(["python3", "-c", check], check=False)
        assert out.returncode == 0 and out.stdout.startswith("TLS"), (name, out.stderr)


def test_a_pod_lists_configmaps_through_the_door_online_and_offline_and_never_beyond_its_rights(
    edge: cluster.Cluster,
) -> None:
    online = pod_get(edge, CONFIGMAPS)
    assert "app" in listed_names(online, edge)
    for path in BEYOND:
        refused = pod_get(edge, path)
        assert refused.returncode != 0 and "403" in refused.stderr, (path, refused.stderr)
    edge.node.cut_link()
    try:
        wait_for(
            "yurthub to see the cloud gone",
            lambda: not hubinstall.yurthub_status(edge.node)["cloud"]["reachable"],  # type: ignore[index]
            timeout=30,
        )
        offline = pod_get(edge, CONFIGMAPS)
        assert listed_names(offline) == listed_names(online), "the pod's own earlier answer, from the cache"
        for path in BEYOND:
            refused = pod_get(edge, path)
            assert refused.returncode != 0 and "503" in refused.stderr, (path, refused.stderr)
        no_token = in_pod(edge, f'wget -q -O - --no-check-certificate "https://{DOOR}{CONFIGMAPS}"')
        assert no_token.returncode != 0 and "401" in no_token.stderr, no_token.stderr
    finally:
        edge.node.restore_link()
    wait_for("the node to be Ready again", lambda: node_ready(edge.kubectl.get("node", NODE)), timeout=60)
    assert "app" in listed_names(pod_get(edge, CONFIGMAPS))


def test_yurthub_removes_its_interface_at_stop_and_makes_it_again_at_start(edge: cluster.Cluster) -> None:
    assert edge.node.run(["ip", "-o", "addr", "show", "dev", "yurthub0"]).stdout.count("169.254.2.1/32") == 1
    edge.node.run(["systemctl", "stop", "yurthub"])
    assert edge.node.run(["ip", "link", "show", "dev", "yurthub0"], check=False).returncode != 0
    edge.node.run(["systemctl", "start", "yurthub"])
    hubinstall.wait_until_serving(edge.node)
    wait_for("the door to open again", lambda: pod_get(edge, CONFIGMAPS).returncode == 0, timeout=30)
