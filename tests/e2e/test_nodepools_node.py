"""Node pools on the real node: `yurtctl convert` installs the NodePool and YurtAppSet CRDs, the real node
`edge-1` and one simulated edge node make pool `site-a`, simulated cloud nodes make `site-b` and `site-c`;
yurt-manager (on the host, bound only to its ClusterRole) keeps the pools; a YurtAppSet puts a real pod on
the real node and simulated pods on the others; yurthub's `servicetopology` on the real node, reading its
NodePool with the node's own identity, gives the node's components (kube-proxy's User-Agent and its own
ServiceAccount token) only the endpoints of its pool, online and, the link cut, from its cache; revert leaves
the cluster and the node as convert found them.

The simulated nodes are kwok's (`testenv.nodepools.start_kwok`: their pods get a pod IP and are Ready, so the
EndpointSlice controller lists them). The cloud pools' nodes exist before convert (`--cloud-nodes`); the
simulated edge node of `site-a` is created after it (convert would send it a Job) and deleted before revert.
The tests run in order and build on each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter import appset, names, nodepool
from testenv import cluster, converterimage, edgeconvert, images, kwok, nodepools, process, snapshot, yurtmanager
from testenv.kubectl import node_ready, wait_for

EDGE = "edge-1"
EDGE_KWOK = "site-a-2"
POOLS = {"site-a": [EDGE, EDGE_KWOK], "site-b": ["site-b-1", "site-b-2"], "site-c": ["site-c-1"]}
CLOUD = [*POOLS["site-b"], *POOLS["site-c"]]
HUB_ARGS = "--heartbeat-interval-seconds=2 --heartbeat-timeout-seconds=2 --heartbeat-failed-retry=1"
KUBE_PROXY = "kube-proxy/v1.34.0 (linux/amd64)"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb"
SITE_LABEL = "example.com/site"
"""A label pool `site-a` puts on its members."""


@dataclasses.dataclass
class Env:
    kube: cluster.Cluster
    directory: Path
    before: tuple[dict[str, Any], dict[str, str]]
    convert: list[str]
    common: list[str]
    manager_kubeconfig: Path
    kwok: process.Process
    manager: yurtmanager.HostManager | None = None


@pytest.fixture(scope="module")
def env(kube: cluster.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert kube.plane is not None
    directory = tmp_path_factory.mktemp("nodepools")
    simulated = nodepools.start_kwok(cluster.binaries(), kube.plane.admin_kubeconfig, directory / "kwok", kube.group)
    try:
        kube.kubectl.apply(nodepools.node(name) for name in CLOUD)
        wait_for("the cloud pools' nodes Ready", lambda: all(ready(kube, n) for n in CLOUD), timeout=120)
        converterimage.load(kube.node, converterimage.build(cluster.cache_dir() / "images"))
        config = yurtmanager.own_kubeconfig(kube.plane, directory)
        # a node with a workload before convert, as nodes are (and kubelet's own checkpoints written before the
        # snapshot, not by the first pod after it)
        kube.kubectl.apply([STOCK_APP])
        wait_for("a workload on the real node", lambda: phase(kube, "stock-app") == "Running", timeout=120)
        common = edgeconvert.common_args(converterimage.IMAGE)
        convert = [
            "convert",
            "--cloud-nodes=" + ",".join(CLOUD),
            f"--edge-nodes={EDGE}",
            f"--hub-args={HUB_ARGS}",
            "--manager-replicas=0",
            *common,
        ]
        e = Env(kube, directory, snapshot.of_cluster(kube), convert, common, config, simulated)
        yield e
        if e.manager is not None:
            e.manager.stop()
    finally:
        simulated.stop()


STOCK_APP: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "stock-app", "namespace": "default"},
    "spec": {
        "nodeName": EDGE,
        "terminationGracePeriodSeconds": 2,
        "containers": [
            {"name": "main", "image": images.BUSYBOX_IMAGE, "command": ["/bin/sh", "-c", "exec sleep 100000"]}
        ],
    },
}


def phase(kube: cluster.Cluster, name: str) -> str:
    return str(kube.kubectl.get("pod", name).get("status", {}).get("phase", ""))


def ready(kube: cluster.Cluster, name: str) -> bool:
    return node_ready(kube.kubectl.get("node", name))


def pool(kube: cluster.Cluster, name: str) -> dict[str, Any]:
    got: dict[str, Any] = kube.kubectl.get(f"nodepools.{nodepool.VERSION}.{nodepool.GROUP}", name)
    return got


def members(kube: cluster.Cluster, name: str) -> list[str]:
    return sorted((pool(kube, name).get("status") or {}).get("nodes") or [])


def web() -> dict[str, Any]:
    """One Deployment per pool: two replicas in `site-a` (one per node: the real pod on `edge-1`), one in
    the others."""
    labels = {"app": "web"}
    return {
        "apiVersion": "apps.openyurt.io/v1beta1",
        "kind": "YurtAppSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "pools": list(POOLS),
            "workload": {
                "workloadTemplate": {
                    "deploymentTemplate": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "replicas": 1,
                            "selector": {"matchLabels": labels},
                            "template": {
                                "metadata": {"labels": labels},
                                "spec": {
                                    "terminationGracePeriodSeconds": 2,
                                    "tolerations": [kwok.TAINT | {"operator": "Equal"}],
                                    "affinity": {
                                        "podAntiAffinity": {
                                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                                {
                                                    "labelSelector": {"matchLabels": labels},
                                                    "topologyKey": "kubernetes.io/hostname",
                                                }
                                            ]
                                        }
                                    },
                                    "containers": [
                                        {
                                            "name": "web",
                                            "image": images.BUSYBOX_IMAGE,
                                            "command": ["/bin/sh", "-c", "exec sleep 100000"],
                                            "ports": [{"containerPort": 8080, "name": "http"}],
                                        }
                                    ],
                                },
                            },
                        },
                    }
                },
                "workloadTweaks": [{"pools": ["site-a"], "tweaks": {"replicas": 2}}],
            },
        },
    }


SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "web",
        "namespace": "default",
        "annotations": {"openyurt.io/topologyKeys": "openyurt.io/nodepool"},
    },
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
}


def web_pods(kube: cluster.Cluster) -> dict[str, str]:
    """Running pods of the YurtAppSet: name → node."""
    return {
        p["metadata"]["name"]: p["spec"].get("nodeName", "")
        for p in kube.kubectl.get("pods", "-n", "default", "-l", "app=web")["items"]
        if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    }


def endpoint_nodes(slices: dict[str, Any]) -> list[str]:
    return sorted(e.get("nodeName", "") for s in slices.get("items") or [] for e in s.get("endpoints") or [])


PROXY_SA = "pools-kube-proxy"
"""kube-proxy's identity for the test (a ServiceAccount bound to the stock `system:node-proxier`): kube-proxy
reads EndpointSlices with its own credentials, which yurthub forwards, not the node's."""
LAST: dict[str, object] = {}
"""What the node got last, for the failure message."""


def proxy_token(kube: cluster.Cluster) -> str:
    kube.kubectl.run("create", "serviceaccount", PROXY_SA, "-n", "kube-system")
    kube.kubectl.run(
        "create", "clusterrolebinding", PROXY_SA, "--clusterrole=system:node-proxier",
        f"--serviceaccount=kube-system:{PROXY_SA}",
    )  # fmt: skip
    return kube.kubectl.run("create", "token", PROXY_SA, "-n", "kube-system", "--duration=2h").strip()


def via_hub(kube: cluster.Cluster, path: str, agent: str, token: str = "") -> tuple[int, str]:
    """GET `path` from yurthub on the node (its plain port), as the component `agent` names, with `token`
    (none: yurthub's own identity)."""
    headers = {"User-Agent": agent} | ({"Authorization": f"Bearer {token}"} if token else {})
    script = (
        "import urllib.request as u,urllib.error as e\n"
        f"r=u.Request('http://127.0.0.1:10261{path}',headers={headers!r})\n"
        "try:\n c=u.urlopen(r,timeout=20);print(c.status);print(c.read().decode())\n"
        "except e.HTTPError as x:\n print(x.code);print(x.read().decode())\n"
    )
    out = kube.node.run(["python3", "-c", script], check=False)
    code, _, body = out.stdout.partition("\n")
    return (int(code) if code.strip().isdigit() else 0), body


def node_sees(kube: cluster.Cluster, token: str) -> list[str] | None:
    """The nodes of the `web` endpoints kube-proxy on the real node gets through yurthub (None: no answer)."""
    code, body = via_hub(kube, SLICES, KUBE_PROXY, token)
    LAST.update(code=code, body=body[:300])
    seen = endpoint_nodes(json.loads(body)) if code == 200 else None
    LAST.update(nodes=seen)
    return seen


def sees_only(kube: cluster.Cluster, token: str, want: list[str], what: str) -> None:
    try:
        wait_for(what, lambda: node_sees(kube, token) == want, timeout=90)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last answer {LAST}; yurthub:\n{kube.node.journal('yurthub', 60)}") from exc


def hub_reachable(kube: cluster.Cluster) -> bool:
    out = kube.node.run(["/opt/yurt-edge/bin/yurthub", "status", "--json"], check=False)
    return out.returncode == 0 and bool(json.loads(out.stdout)["cloud"]["reachable"])


def test_convert_installs_the_pool_crds_and_yurt_manager_keeps_the_pools(env: Env) -> None:
    kube = env.kube
    # yurt-manager converts the node once convert labels it (conversion by label): up before convert
    env.manager = yurtmanager.start(env.manager_kubeconfig, env.directory / "manager", "host-manager")
    result = edgeconvert.yurtctl(kube, *env.convert)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^\s+{EDGE}\s+converted", result.stdout, re.M), result.stdout
    for crd in ("nodepools.apps.openyurt.io", "yurtappsets.apps.openyurt.io"):
        kube.kubectl.run("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    wait_for("the edge node Ready through yurthub", lambda: ready(kube, EDGE), timeout=90)

    kube.kubectl.apply(
        [
            nodepools.nodepool("site-a", "Edge", spec={"labels": {SITE_LABEL: "a"}}),
            nodepools.nodepool("site-b", "Cloud"),
            nodepools.nodepool("site-c", "Cloud"),
        ]
    )
    kube.kubectl.apply([nodepools.node(EDGE_KWOK, "site-a", edge=True)])
    # the administrator puts the converted nodes into their pools
    for name, nodes in POOLS.items():
        for node in nodes:
            if node != EDGE_KWOK:
                kube.kubectl.run("label", "node", node, f"{nodepool.POOL_LABEL}={name}", "--overwrite")
    wait_for(
        "every pool's members in its status",
        lambda: all(members(kube, name) == sorted(nodes) for name, nodes in POOLS.items()),
        timeout=90,
    )
    assert pool(kube, "site-a")["status"]["readyNodeNum"] == 2
    wait_for(
        "the pool's label on the real node",
        lambda: kube.kubectl.get("node", EDGE)["metadata"]["labels"].get(SITE_LABEL) == "a",
        timeout=60,
    )
    assert SITE_LABEL not in kube.kubectl.get("node", "site-b-1")["metadata"]["labels"]


def test_a_yurtappset_runs_a_real_pod_on_the_real_node_and_simulated_pods_in_the_other_pools(env: Env) -> None:
    kube = env.kube
    kube.kubectl.apply([web(), SERVICE])
    want = {EDGE, EDGE_KWOK, "site-b-1", "site-b-2", "site-c-1"}
    wait_for(
        "a web pod running on the real node and one per simulated node of each pool's share",
        lambda: set(web_pods(kube).values()) >= {EDGE, EDGE_KWOK} and len(web_pods(kube)) == 4,
        timeout=180,
    )
    deployments = kube.kubectl.get("deployments", "-n", "default", "-l", f"{appset.REF_LABEL}=web")["items"]
    by_pool = {d["spec"]["template"]["spec"]["nodeSelector"][nodepool.POOL_LABEL]: d for d in deployments}
    assert sorted(by_pool) == sorted(POOLS)
    assert by_pool["site-a"]["spec"]["replicas"] == 2
    on = web_pods(kube)
    for name, node in on.items():
        pool_of = next(p for p, nodes in POOLS.items() if node in nodes)
        assert name.startswith(f"web-{pool_of}-"), (name, node)
    assert set(on.values()) <= want
    real = next(name for name, node in on.items() if node == EDGE)
    statuses = kube.kubectl.get("pod", real)["status"]["containerStatuses"]
    assert statuses[0]["containerID"].startswith("containerd://"), statuses  # a real container, not kwok's
    wait_for(
        "the YurtAppSet's status to count every pool ready",
        lambda: (kube.kubectl.get("yurtappset", "web").get("status") or {}).get("readyWorkloads") == len(POOLS),
        timeout=120,
    )


def test_servicetopology_on_the_real_node_gives_only_its_pools_endpoints_online_and_offline(env: Env) -> None:
    kube = env.kube
    on = web_pods(kube)
    everywhere = sorted(on.values())
    wait_for(
        "the web EndpointSlices to list every running pod",
        lambda: (
            endpoint_nodes(kube.kubectl.get("endpointslices", "-l", "kubernetes.io/service-name=web")) == everywhere
        ),
        timeout=90,
    )
    assert len(set(everywhere)) >= 3, "endpoints in more than one pool, or the filter proves nothing"
    site_a = sorted(n for n in everywhere if n in POOLS["site-a"])
    assert site_a == sorted(POOLS["site-a"])
    token = proxy_token(kube)
    sees_only(kube, token, site_a, "kube-proxy on the node to get site-a's endpoints only")
    journal = kube.node.journal("yurthub", lines=2000)
    assert "members from source=nodepool" in journal, journal[-3000:]

    kube.node.cut_link()
    try:
        wait_for("yurthub to see the cloud gone", lambda: not hub_reachable(kube), timeout=30)
        sees_only(kube, token, site_a, "offline, from the cache, still only the pool's endpoints")
    finally:
        kube.node.restore_link()
    wait_for("yurthub to see the cloud again", lambda: hub_reachable(kube), timeout=60)
    # a component nobody filters for gets everything: the filter, not the slices, made the difference. (Last:
    # yurthub keeps a request with a token in that token's cache scope whatever the User-Agent, so this answer
    # would replace kube-proxy's cached list.)
    code, body = via_hub(kube, SLICES, "kubectl/v1.34.0", token)
    assert code == 200 and endpoint_nodes(json.loads(body)) == everywhere, (code, body[:2000])
    wait_for(f"{EDGE} Ready again", lambda: ready(kube, EDGE), timeout=120)


def test_revert_leaves_the_cluster_and_the_node_as_convert_found_them(env: Env) -> None:
    kube = env.kube
    # the administrator takes the pools apart: the YurtAppSet and Service go, the nodes leave their pools
    kube.kubectl.run("delete", "yurtappset", "web", "--wait=true", timeout=120)
    kube.kubectl.run("delete", "service", "web")
    kube.kubectl.run("delete", "clusterrolebinding", PROXY_SA)
    kube.kubectl.run("delete", "serviceaccount", PROXY_SA, "-n", "kube-system")
    kube.kubectl.run("delete", "node", EDGE_KWOK, "--wait=true", timeout=60)
    for node in [EDGE, *CLOUD]:
        kube.kubectl.run("label", "node", node, f"{nodepool.POOL_LABEL}-")
    wait_for(
        "yurt-manager to take the pool's label off the node that left",
        lambda: SITE_LABEL not in kube.kubectl.get("node", EDGE)["metadata"]["labels"],
        timeout=60,
    )
    wait_for("the pools empty", lambda: all(members(kube, name) == [] for name in POOLS), timeout=60)
    wait_for("the web pods gone", lambda: not kube.kubectl.get("pods", "-l", "app=web")["items"], timeout=120)
    result = edgeconvert.yurtctl(kube, "revert", *env.common)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"^\s+{EDGE}\s+reverted", result.stdout, re.M), result.stdout
    # yurt-manager reverted the node; run outside the cluster, it is stopped by its operator after revert,
    # who removes the Lease it renewed meanwhile
    if env.manager is not None:
        env.manager.stop()
        env.manager = None
    kube.kubectl.run("delete", "lease", "-n", "kube-system", "yurt-manager", "--ignore-not-found")
    assert kube.kubectl.run("get", "crd", "-o", "name").count(nodepool.GROUP) == 0
    with contextlib.suppress(TimeoutError):  # garbage collection settles a little later; the assert shows what differs
        wait_for("the cluster to settle as it was", lambda: snapshot.since(kube, env.before) == [], timeout=90)
    left = snapshot.since(kube, env.before)
    assert not left, "revert left differences:\n" + "\n".join(left)
    assert ready(kube, EDGE)
    assert names.EDGE_WORKER_LABEL not in kube.kubectl.get("node", EDGE)["metadata"]["labels"]
