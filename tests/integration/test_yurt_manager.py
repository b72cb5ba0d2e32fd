"""yurt-manager against the real kube-apiserver, started from its console script with a kubeconfig of its
own (bound only to the ClusterRole `yurtctl convert` installs for it), two replicas under one Lease."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import csr, kube, names
from testenv import cluster, yurtmanager
from testenv.kubectl import wait_for
from tests.unit import access_contract
from tests.unit.csrfixtures import request_b64

EDGE, PLAIN = "edge-auto", "edge-plain"
Replica = yurtmanager.HostManager


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        yield c


@pytest.fixture(scope="module")
def manager_kubeconfig(cloud: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert cloud.plane is not None
    return yurtmanager.own_kubeconfig(cloud.plane, tmp_path_factory.mktemp("manager"))


def start_replica(config: Path, directory: Path, identity: str) -> Replica:
    return yurtmanager.start(config, directory, identity, "--resync-seconds=0.5", "--leader-elect-lease-duration=4")


@pytest.fixture(scope="module")
def replicas(manager_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    directory = tmp_path_factory.mktemp("replicas")
    started = [start_replica(manager_kubeconfig, directory, name) for name in ("replica-a", "replica-b")]
    yield started
    for r in started:
        r.stop()
        logging.getLogger(__name__).info("%s log:\n%s", r.log.stem, r.log.read_text())


def holder(cloud: cluster.Cluster) -> str:
    return str(cloud.kubectl.get("lease", "-n", "kube-system", "yurt-manager")["spec"].get("holderIdentity", ""))


def test_the_access_contract_holds_against_the_real_apiserver(cloud: cluster.Cluster) -> None:
    assert cloud.plane is not None
    api = kube.KubeApi(str(cloud.plane.admin_kubeconfig))
    try:
        access_contract.check(api, "contract")
    finally:
        api.close()


def node(name: str, autonomous: bool) -> dict[str, Any]:
    annotations = {names.AUTONOMY_ANNOTATION: "true"} if autonomous else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {names.EDGE_WORKER_LABEL: "true"}, "annotations": annotations},
    }


def pod(name: str, on: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": on, "containers": [{"name": "c", "image": "busybox"}]},
    }


def seconds(cloud: cluster.Cluster, name: str) -> dict[str, Any]:
    p = cloud.kubectl.get("pod", name)
    return {t["key"]: t.get("tolerationSeconds") for t in p["spec"]["tolerations"] if t.get("effect") == "NoExecute"}


FOREVER = {names.NOT_READY_TAINT: None, names.UNREACHABLE_TAINT: None}
DEFAULT = {names.NOT_READY_TAINT: 300, names.UNREACHABLE_TAINT: 300}


def test_one_replica_leads_and_both_report_health_and_metrics(cloud: cluster.Cluster, replicas: list[Replica]) -> None:
    wait_for("a Lease holder", lambda: holder(cloud) in ("replica-a", "replica-b"), timeout=30)
    for r in replicas:
        assert r.get("/healthz") == (200, "ok")
        assert r.get("/readyz") == (200, "ok")
    leaders = [r.get("/metrics")[1].count("\nyurt_manager_leader 1.0") for r in replicas]
    assert sorted(leaders) == [0, 1]


def test_pods_on_an_autonomous_node_tolerate_forever_and_get_their_originals_back(
    cloud: cluster.Cluster, replicas: list[Replica]
) -> None:
    cloud.kubectl.apply([node(EDGE, True), node(PLAIN, False)])
    cloud.kubectl.apply([pod("on-auto", EDGE), pod("on-plain", PLAIN)])
    wait_for("the autonomous node's pod to tolerate forever", lambda: seconds(cloud, "on-auto") == FOREVER, timeout=30)
    annotations = cloud.kubectl.get("pod", "on-auto")["metadata"]["annotations"]
    assert annotations[names.ORIGINAL_NOT_READY] == "300" and annotations[names.ORIGINAL_UNREACHABLE] == "300"
    assert seconds(cloud, "on-plain") == DEFAULT
    cloud.kubectl.run("annotate", "node", EDGE, f"{names.AUTONOMY_ANNOTATION}-")
    wait_for("the originals to come back", lambda: seconds(cloud, "on-auto") == DEFAULT, timeout=30)
    assert names.ORIGINAL_NOT_READY not in (cloud.kubectl.get("pod", "on-auto")["metadata"].get("annotations") or {})
    cloud.kubectl.run("annotate", "node", PLAIN, f"{names.AUTONOMY_DURATION_ANNOTATION}=1h")
    wait_for(
        "a duration to set those seconds",
        lambda: seconds(cloud, "on-plain") == dict.fromkeys(DEFAULT, 3600),
        timeout=30,
    )
    for r in replicas:  # every change above came to them by watch: each collection was listed once
        metrics = r.get("/metrics")[1]
        for resource in ("nodes", "pods", "certificatesigningrequests"):
            assert f'yurt_manager_lists_total{{resource="{resource}"}} 1.0' in metrics, metrics


HUB = {"app.kubernetes.io/managed-by": "yurthub"}
SERVING = ["digital signature", "key encipherment", "server auth"]
CLIENT = ["digital signature", "key encipherment", "client auth"]
BOOT_USER, BOOT_GROUPS = "system:bootstrap:abcdef", "system:bootstrappers"


def submit(
    cloud: cluster.Cluster,
    name: str,
    user: str,
    signer: str,
    request: str,
    usages: list[str],
    groups: str,
    labels: dict[str, str] | None = None,
) -> None:
    """Create a CSR as `user` in `groups` (impersonated by the admin), labelled as yurthub's when it is a
    serving request unless `labels` says otherwise."""
    if labels is None:
        labels = HUB if signer == csr.SERVING_SIGNER else {}
    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "labels": labels},
        "spec": {"signerName": signer, "request": request, "usages": usages},
    }
    who = [f"--as={user}", *(f"--as-group={g}" for g in groups.split(","))] if user else []  # no user: admin
    cloud.kubectl.run("create", *who, "-f", "-", stdin=json.dumps(body))


def conditions(cloud: cluster.Cluster, name: str) -> list[tuple[str, str]]:
    got = cloud.kubectl.get("csr", name).get("status", {}).get("conditions") or []
    return [(c["type"], c.get("reason", "")) for c in got]


def test_csrs_of_our_components_are_approved_and_signed_others_denied_or_left(
    cloud: cluster.Cluster, replicas: list[Replica]
) -> None:
    cloud.kubectl.apply([node(EDGE, True)])
    cloud.kubectl.run(
        "patch",
        "node",
        EDGE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"addresses": [{"type": "InternalIP", "address": "10.213.0.2"}]}}),
    )
    me = f"system:node:{EDGE}"
    serving = SERVING
    good = request_b64(me, ["system:nodes"], ips=("169.254.2.1", "10.213.0.2"), dns=(EDGE,))
    submit(cloud, "hub-serving", me, csr.SERVING_SIGNER, good, serving, "system:nodes")
    wrong_ip = request_b64(me, ["system:nodes"], ips=("10.9.9.9",))
    submit(cloud, "hub-serving-bad-ip", me, csr.SERVING_SIGNER, wrong_ip, serving, "system:nodes")
    hub_client = request_b64(me, ["openyurt:yurthub", "system:nodes"])
    client_usages = ["digital signature", "key encipherment", "client auth"]
    submit(cloud, "hub-client", me, csr.CLIENT_SIGNER, hub_client, client_usages, "system:nodes")
    other = "system:node:somebody"
    submit(cloud, "hub-client-other-node", other, csr.CLIENT_SIGNER, hub_client, client_usages, "system:nodes")
    alice = request_b64("alice", ["developers"])
    submit(
        cloud,
        "not-ours",
        "",
        csr.CLIENT_SIGNER,
        alice,
        ["digital signature", "client auth"],
        "system:authenticated",
    )

    wait_for(
        "decisions",
        lambda: all(
            conditions(cloud, n) for n in ("hub-serving", "hub-serving-bad-ip", "hub-client-other-node", "hub-client")
        ),
        timeout=30,
    )
    assert conditions(cloud, "hub-serving")[0] == ("Approved", "YurtEdgeServingCert")
    assert conditions(cloud, "hub-client")[0] == ("Approved", "YurtEdgeHubClientCert")
    assert conditions(cloud, "hub-serving-bad-ip") == [("Denied", "BadSubjectAltName")]
    assert conditions(cloud, "hub-client-other-node") == [("Denied", "WrongRequester")]
    wait_for(
        "kube-controller-manager to sign the approved ones",
        lambda: all(
            cloud.kubectl.get("csr", n).get("status", {}).get("certificate") for n in ("hub-serving", "hub-client")
        ),
        timeout=30,
    )
    assert conditions(cloud, "not-ours") == []
    logs = "".join(r.log.read_text() for r in replicas)
    assert "csr denied name=hub-serving-bad-ip" in logs


def set_addresses(cloud: cluster.Cluster, name: str, *addresses: tuple[str, str]) -> None:
    body = {"status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}
    cloud.kubectl.run("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(body))


def message(cloud: cluster.Cluster, name: str) -> str:
    got = cloud.kubectl.get("csr", name).get("status", {}).get("conditions") or []
    return str(got[0].get("message", "")) if got else ""


def test_attacks_on_the_certificate_boundary_are_denied_or_left_alone(
    cloud: cluster.Cluster, replicas: list[Replica]
) -> None:
    """Each request is one attack by a node (or a bootstrap-token holder), decided against the real Node
    objects and the real apiserver's serving certificate (it carries 127.0.0.1, the advertise address, the
    ClusterIP and the kubernetes names)."""
    assert cloud.plane is not None
    apiserver_ip = cloud.plane.settings.advertise_address
    svc_ip = cloud.kubectl.get("service", "kubernetes")["spec"]["clusterIP"]
    cloud.kubectl.apply([node(EDGE, True), node("edge-neighbour", False), node("kubernetes", False)])
    # The node writes what it likes into its own status: a neighbour's address, the apiserver's.
    set_addresses(
        cloud, EDGE, ("InternalIP", "10.213.0.2"), ("InternalIP", "10.213.0.50"), ("ExternalIP", apiserver_ip)
    )
    set_addresses(cloud, "edge-neighbour", ("InternalIP", "10.213.0.50"))
    set_addresses(cloud, "kubernetes", ("InternalIP", "10.213.0.60"))
    me, nodes = f"system:node:{EDGE}", "system:nodes"

    def hub_serving(name: str, ips: tuple[str, ...], dns: tuple[str, ...] = (), node_name: str = EDGE) -> None:
        who = f"system:node:{node_name}"
        request = request_b64(who, [nodes], ips=("169.254.2.1", *ips), dns=dns)
        submit(cloud, name, who, csr.SERVING_SIGNER, request, SERVING, nodes)

    # A kubelet's own serving request (no yurthub label), with names we would refuse: not ours to decide.
    kubelets = request_b64(me, [nodes], ips=("10.213.0.2",), dns=("evil.example",))
    submit(cloud, "kubelet-serving", me, csr.SERVING_SIGNER, kubelets, SERVING, nodes, labels={})
    attacks = {
        "atk-kubernetes-names": ((), ("kubernetes.default.svc",)),
        "atk-cluster-ip": ((svc_ip,), ()),
        "atk-loopback": (("127.0.0.1",), ()),
        "atk-localhost": ((), ("localhost",)),
        "atk-apiserver-address": ((apiserver_ip,), ()),
        "atk-neighbours-address": (("10.213.0.50",), ()),
    }
    for name, (ips, dns) in attacks.items():
        hub_serving(name, ips, dns)
    hub_serving("atk-node-named-kubernetes", (), ("kubernetes",), node_name="kubernetes")
    hub_serving("hub-serving-own-names", ("10.213.0.2",), (EDGE,))

    hub = ["openyurt:yurthub", nodes]
    taken = request_b64(me, hub)
    submit(cloud, "atk-token-takes-a-node", BOOT_USER, csr.CLIENT_SIGNER, taken, CLIENT, BOOT_GROUPS)
    fresh = request_b64("system:node:brand-new", hub)
    submit(cloud, "token-joins-a-new-node", BOOT_USER, csr.CLIENT_SIGNER, fresh, CLIENT, BOOT_GROUPS)
    tenant = request_b64(me, [*hub, "openyurt:tenant:t1"])
    submit(cloud, "atk-tenant-group", me, csr.CLIENT_SIGNER, tenant, CLIENT, nodes)

    denied = [*attacks, "atk-node-named-kubernetes", "atk-token-takes-a-node", "atk-tenant-group"]
    approved = ["hub-serving-own-names", "token-joins-a-new-node"]
    wait_for("decisions", lambda: all(conditions(cloud, n) for n in denied + approved), timeout=30)
    for name in denied:
        assert conditions(cloud, name)[0][0] == "Denied", name
    for name in [*attacks, "atk-node-named-kubernetes"]:
        assert conditions(cloud, name) == [("Denied", "BadSubjectAltName")], name
    assert "the apiserver's serving certificate" in message(cloud, "atk-apiserver-address")
    assert "another node lists it" in message(cloud, "atk-neighbours-address")
    assert conditions(cloud, "atk-token-takes-a-node") == [("Denied", "NodeExists")]
    assert conditions(cloud, "atk-tenant-group") == [("Denied", "TenantNotAllowed")]
    for name in approved:
        assert conditions(cloud, name)[0][0] == "Approved", name
    assert conditions(cloud, "kubelet-serving") == []  # left to whoever approves kubelets' serving certs


def test_the_standby_takes_over_when_the_leader_stops(cloud: cluster.Cluster, replicas: list[Replica]) -> None:
    first = holder(cloud)
    leader = next(r for r in replicas if first in r.log.name)
    leader.stop()
    wait_for("the standby to take the Lease", lambda: holder(cloud) not in ("", first), timeout=30)
    cloud.kubectl.apply([node("edge-late", True), pod("late", "edge-late")])
    wait_for("the new leader to act", lambda: seconds(cloud, "late") == FOREVER, timeout=30)


def test_the_explicit_flags_open_the_kubernetes_names_and_listed_tenants_only(
    cloud: cluster.Cluster, replicas: list[Replica], manager_kubeconfig: Path, tmp_path: Path
) -> None:
    assert cloud.plane is not None
    for r in replicas:
        r.stop()
    flagged = yurtmanager.start(
        manager_kubeconfig,
        tmp_path,
        "flagged",
        "--resync-seconds=0.5",
        "--approve-apiserver-names",
        "--allowed-tenant-groups=openyurt:tenant:t1",
    )
    try:
        svc_ip = cloud.kubectl.get("service", "kubernetes")["spec"]["clusterIP"]
        me, nodes = f"system:node:{EDGE}", "system:nodes"
        names_ = ("kubernetes", "kubernetes.default.svc", "localhost")
        kube = request_b64(me, [nodes], ips=("169.254.2.1", "127.0.0.1", svc_ip), dns=names_)
        submit(cloud, "flag-kubernetes-names", me, csr.SERVING_SIGNER, kube, SERVING, nodes)
        public = request_b64(me, [nodes], ips=(cloud.plane.settings.advertise_address,))
        submit(cloud, "flag-apiserver-address", me, csr.SERVING_SIGNER, public, SERVING, nodes)
        hub = ["openyurt:yurthub", nodes]
        t1 = request_b64(me, [*hub, "openyurt:tenant:t1"])
        submit(cloud, "flag-tenant-t1", me, csr.CLIENT_SIGNER, t1, CLIENT, nodes)
        t2 = request_b64(me, [*hub, "openyurt:tenant:t2"])
        submit(cloud, "flag-tenant-t2", me, csr.CLIENT_SIGNER, t2, CLIENT, nodes)
        all_ = ("flag-kubernetes-names", "flag-apiserver-address", "flag-tenant-t1", "flag-tenant-t2")
        wait_for("decisions", lambda: all(conditions(cloud, n) for n in all_), timeout=30)
        assert conditions(cloud, "flag-kubernetes-names")[0] == ("Approved", "YurtEdgeServingCert")
        assert conditions(cloud, "flag-apiserver-address") == [("Denied", "BadSubjectAltName")]
        assert conditions(cloud, "flag-tenant-t1")[0] == ("Approved", "YurtEdgeHubClientCert")
        assert conditions(cloud, "flag-tenant-t2") == [("Denied", "TenantNotAllowed")]
    finally:
        flagged.stop()
