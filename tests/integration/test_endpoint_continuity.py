"""Pods of autonomous nodes stay in their Services while the node is unreachable, against the real cloud.

The real kube-apiserver calls the real yurt-manager webhook (started from its console script with the rights
`yurtctl convert` gives it, its webhook configuration, Secret and Service made by the same function convert
uses); the real kube-controller-manager's node lifecycle controller marks nodes and pods not ready, and its
EndpointSlice and Endpoints controllers write the Service's endpoints. The nodes are plain Node objects whose
heartbeat (their Lease, as kubelet renews it) this test keeps and then stops, the way a cut link stops it.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from converter import components, continuity, errors, kube, names
from testenv import cluster, controlplane, yurtmanager
from testenv.kubectl import wait_for

Obj = dict[str, Any]
NS = "shop"
AUTO, PLAIN, TIMED = "edge-auto", "edge-plain", "edge-timed"
DURATION_S = 45
IPS = {AUTO: "10.244.7.10", PLAIN: "10.244.7.20", TIMED: "10.244.7.30"}
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Heartbeats:
    """Renews each living node's Lease every 2 s, as kubelet does; `stop(node)` is the cut link."""

    def __init__(self, api: kube.KubeApi) -> None:
        self.api = api
        self.alive: set[str] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def beat(self, node: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        lease = self.api.get(path)
        if lease is None:
            body = {"metadata": {"name": node}, "spec": {"holderIdentity": node, "leaseDurationSeconds": 40}}
            lease = self.api.create(path.rsplit("/", 1)[0], body)
        lease["spec"]["renewTime"] = _now()
        self.api.replace(path, lease)

    def _run(self) -> None:
        while not self.stopping.is_set():
            for node in sorted(self.alive):
                try:
                    self.beat(node)
                except errors.ConverterError as exc:
                    logging.getLogger(__name__).warning("heartbeat failed node=%s error=%s", node, exc)
            self.stopping.wait(2)


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        yield c


@pytest.fixture(scope="module")
def admin(cloud: cluster.Cluster) -> Iterator[kube.KubeApi]:
    assert cloud.plane is not None
    api = kube.KubeApi(str(cloud.plane.admin_kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def manager(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[yurtmanager.HostManager]:
    assert cloud.plane is not None
    directory = tmp_path_factory.mktemp("manager")
    config = yurtmanager.own_kubeconfig(cloud.plane, directory)
    port = controlplane.free_port()
    cloud.kubectl.apply(components.endpoint_webhook_objects(yurtmanager.webhook_url(port)))
    m = yurtmanager.start(config, directory, "replica-a", "--resync-seconds=0.5", webhook_port=port)
    yield m
    m.stop()
    logging.getLogger(__name__).info("yurt-manager log:\n%s", m.log.read_text())


@pytest.fixture(scope="module")
def beats(admin: kube.KubeApi) -> Iterator[Heartbeats]:
    h = Heartbeats(admin)
    h.thread.start()
    yield h
    h.stopping.set()
    h.thread.join(10)


def make_node(admin: kube.KubeApi, name: str, annotations: dict[str, str]) -> None:
    labels = {names.EDGE_WORKER_LABEL: "true"}
    admin.create("/api/v1/nodes", {"metadata": {"name": name, "labels": labels, "annotations": annotations}})
    now = _now()[:19] + "Z"
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}
    status = {"conditions": [ready | {"lastHeartbeatTime": now, "lastTransitionTime": now}]}
    admin.patch(f"/api/v1/nodes/{name}/status", {"status": status})


def make_pod(admin: kube.KubeApi, node: str) -> str:
    """A pod on `node` that kubelet reported Running and Ready; returns its uid."""
    body = {
        "metadata": {"name": f"web-{node}", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "httpd", "image": "busybox"}]},
    }
    created = admin.create(f"/api/v1/namespaces/{NS}/pods", body)
    now = _now()[:19] + "Z"
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": now}
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    ip = IPS[node]
    status = {"phase": "Running", "conditions": conditions, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.9"}
    admin.patch(f"/api/v1/namespaces/{NS}/pods/web-{node}/status", {"status": status})
    return str(created["metadata"]["uid"])


def readiness(admin: kube.KubeApi) -> dict[str, bool | None]:
    """The Service's EndpointSlice as the apiserver holds it: ready per node."""
    out: dict[str, bool | None] = {}
    for s in admin.list(SLICES, labels="kubernetes.io/service-name=web"):
        for ep in s.get("endpoints") or []:
            out[str(ep.get("nodeName"))] = (ep.get("conditions") or {}).get("ready")
    return out


def endpoints_ready(admin: kube.KubeApi) -> set[str]:
    got = admin.get(f"/api/v1/namespaces/{NS}/endpoints/web") or {}
    return {str(a.get("nodeName")) for s in got.get("subsets") or [] for a in s.get("addresses") or []}


def reviews_kept(manager: yurtmanager.HostManager, resource: str = "") -> float:
    """Reviews the webhook answered with a patch (of `resource`, or of both)."""
    total = 0.0
    for line in manager.get("/metrics")[1].splitlines():
        kept = line.startswith("yurt_manager_endpoint_reviews_total{") and 'outcome="kept"' in line
        if kept and (f'resource="{resource}"' in line or not resource):
            total += float(line.rsplit(" ", 1)[1])
    return total


def node_unknown(admin: kube.KubeApi, name: str) -> bool:
    node = admin.get(f"/api/v1/nodes/{name}") or {}
    return any(
        c.get("type") == "Ready" and c.get("status") != "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


def pod_ready(admin: kube.KubeApi, node: str) -> bool:
    return continuity.pod_ready(admin.get(f"/api/v1/namespaces/{NS}/pods/web-{node}"))


def test_yurt_manager_writes_its_ca_into_the_configuration(
    admin: kube.KubeApi, manager: yurtmanager.HostManager
) -> None:
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{components.ENDPOINT_WEBHOOK}"

    def bundles() -> set[str]:
        config = admin.get(path) or {}
        return {str((w.get("clientConfig") or {}).get("caBundle", "")) for w in config.get("webhooks") or []}

    wait_for("the caBundle", lambda: len(bundles()) == 1 and "" not in bundles(), timeout=60)
    secret = admin.get(f"/api/v1/namespaces/kube-system/secrets/{components.WEBHOOK_SECRET}") or {}
    assert bundles() == {secret["data"]["ca.crt"]}


def test_an_unreachable_autonomous_nodes_pod_stays_in_its_service_and_a_plain_nodes_does_not(
    admin: kube.KubeApi, manager: yurtmanager.HostManager, beats: Heartbeats, cloud: cluster.Cluster
) -> None:
    admin.create("/api/v1/namespaces", {"metadata": {"name": NS}})
    wait_for(
        "the namespace's default ServiceAccount",
        lambda: admin.get(f"/api/v1/namespaces/{NS}/serviceaccounts/default") is not None,
        timeout=60,
    )
    make_node(admin, AUTO, {names.AUTONOMY_ANNOTATION: "true"})
    make_node(admin, PLAIN, {})
    make_node(admin, TIMED, {names.AUTONOMY_DURATION_ANNOTATION: f"{DURATION_S}s"})
    for n in (AUTO, PLAIN, TIMED):
        beats.beat(n)
        beats.alive.add(n)
    uids = {n: make_pod(admin, n) for n in (AUTO, PLAIN, TIMED)}
    admin.create(
        f"/api/v1/namespaces/{NS}/services",
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "protocol": "TCP"}]}},
    )
    wait_for(
        "every pod ready in the Service",
        lambda: readiness(admin) == dict.fromkeys((AUTO, PLAIN, TIMED), True),
        timeout=60,
    )
    assert reviews_kept(manager) == 0

    beats.alive.clear()  # the link is cut: no more heartbeats
    for n in (AUTO, PLAIN, TIMED):
        wait_for(f"{n} to go NotReady", lambda n=n: node_unknown(admin, n), timeout=60)
    wait_for(
        "the lifecycle controller to mark the pods not ready",
        lambda: not any(pod_ready(admin, n) for n in (AUTO, PLAIN, TIMED)),
        timeout=60,
    )
    # The controllers write once they have seen the pods marked (the EndpointSlice controller may take a
    # moment longer than the Endpoints one): wait for the write the webhook answered with a patch, and for
    # what the apiserver stored. Without the webhook no review is kept and the autonomous pods leave the
    # Service like the plain node's (until yurt-manager's next pass puts them back).
    expected = {AUTO: True, PLAIN: False, TIMED: True}
    wait_for(
        "the EndpointSlice controller's write, kept by the webhook",
        lambda: reviews_kept(manager, "endpointslices") >= 1 and readiness(admin) == expected,
        timeout=60,
    )
    wait_for(
        "the Endpoints controller's write, kept by the webhook",
        lambda: reviews_kept(manager, "endpoints") >= 1 and endpoints_ready(admin) == {AUTO, TIMED},
        timeout=60,
    )

    # attack: a slice (labelled as the controller's, so the webhook sees it) naming the autonomous pod with
    # an address that is not the pod's is not made ready; nor is the plain node's pod by a forged review
    forged = {
        "metadata": {"name": "forged", "labels": dict(continuity.SLICE_MANAGED_BY)},
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["10.244.99.99"],
                "conditions": {"ready": False},
                "nodeName": AUTO,
                "targetRef": {"kind": "Pod", "namespace": NS, "name": f"web-{AUTO}", "uid": uids[AUTO]},
            }
        ],
    }
    assert admin.create(SLICES, forged)["endpoints"][0]["conditions"]["ready"] is False
    secret = admin.get(f"/api/v1/namespaces/kube-system/secrets/{components.WEBHOOK_SECRET}") or {}
    plain_slice = {
        "kind": "EndpointSlice",
        "metadata": {"name": "x", "namespace": NS},
        "endpoints": [
            {
                "addresses": [IPS[PLAIN]],
                "conditions": {"ready": False},
                "nodeName": AUTO,  # claims the autonomous node; the apiserver says the pod runs elsewhere
                "targetRef": {"kind": "Pod", "namespace": NS, "name": f"web-{PLAIN}", "uid": uids[PLAIN]},
            }
        ],
    }
    answer = direct_review(manager_port(manager), base64.b64decode(secret["data"]["ca.crt"]), plain_slice)
    assert answer["response"]["allowed"] is True and "patch" not in answer["response"]

    # the autonomy duration lapses: the timed node's pod is let go
    wait_for(
        "the timed node's pod to be let go", lambda: readiness(admin).get(TIMED) is not True, timeout=DURATION_S + 60
    )
    assert readiness(admin).get(AUTO) is True
    # autonomy turned off while the node is still unreachable: nothing makes the stock controllers write
    # again, yurt-manager's pass lets the pod go
    cloud.kubectl.run("annotate", "node", AUTO, f"{names.AUTONOMY_ANNOTATION}-")
    wait_for("the autonomous node's pod to be let go", lambda: readiness(admin).get(AUTO) is False, timeout=60)
    wait_for("the Endpoints to agree", lambda: endpoints_ready(admin) == set(), timeout=60)


def manager_port(manager: yurtmanager.HostManager) -> int:
    for line in manager.log.read_text().splitlines():
        if "webhook serving address=" in line:
            return int(line.split("address=", 1)[1].split()[0].rsplit(":", 1)[1])
    raise AssertionError("yurt-manager never said it serves its webhook")


def direct_review(port: int, ca: bytes, obj: Obj) -> Obj:
    """A review sent straight to the webhook, by someone who is not the apiserver."""
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u", "operation": "CREATE", "object": obj},
    }
    req = urllib.request.Request(
        f"https://127.0.0.1:{port}/mutate-endpointslices",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, context=ssl.create_default_context(cadata=ca.decode()), timeout=10) as resp:
        answer: Obj = json.loads(resp.read())
        return answer


def test_a_stopped_yurt_manager_blocks_nothing(admin: kube.KubeApi, manager: yurtmanager.HostManager) -> None:
    """failurePolicy Ignore: with yurt-manager down, the controllers' writes go through unchanged."""
    manager.stop()
    admin.create(
        f"/api/v1/namespaces/{NS}/services",
        {
            "metadata": {"name": "after"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 81, "protocol": "TCP"}]},
        },
    )

    def written() -> bool:
        slices = admin.list(SLICES, labels="kubernetes.io/service-name=after")
        return bool(slices) and len(slices[0].get("endpoints") or []) == len(IPS)

    wait_for("the new Service's EndpointSlice, written without the webhook", written, timeout=60)
    endpoints = admin.list(SLICES, labels="kubernetes.io/service-name=after")[0]["endpoints"]
    assert all(ep["conditions"]["ready"] is False for ep in endpoints)  # stock: every pod is marked not ready
