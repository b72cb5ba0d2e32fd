"""Integration fixtures: the real control plane (no node), and yurthub started from its console script on
the host, talking to the apiserver through a relay the tests can black-hole."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testenv import cluster, hosthub, relay
from testenv.kubectl import wait_for

NODE = "yurt-test"


Hub = hosthub.HostHub


@pytest.fixture(scope="module")
def cloud() -> Iterator[cluster.Cluster]:
    with cluster.Cluster.start(cluster.Settings(real_node=False)) as c:
        c.kubectl.apply(
            [
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
                {  # beyond what the Node authorizer gives a node, so tests can read ConfigMaps in bulk
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "yurt-test-view"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": f"system:node:{NODE}"}
                    ],
                },
            ]
        )
        # `view` is an aggregated role: its rules appear once the controller-manager's aggregation ran
        wait_for("the view role's rules", lambda: bool(c.kubectl.get("clusterrole", "view").get("rules")), timeout=60)
        yield c


@pytest.fixture(scope="module")
def link(cloud: cluster.Cluster) -> Iterator[relay.Relay]:
    port = int(cloud.plane.server.rsplit(":", 1)[1])  # type: ignore[union-attr]
    r = relay.Relay("127.0.0.1", port)
    yield r
    r.close()


def start_hub(cloud: cluster.Cluster, link: relay.Relay, directory: Path, *extra: str) -> Hub:
    assert cloud.plane is not None
    return hosthub.start(cloud.plane, f"https://127.0.0.1:{link.port}", NODE, directory, *extra)


def stop_hub(hub: Hub) -> None:
    hub.stop()


@pytest.fixture(scope="module")
def hub(cloud: cluster.Cluster, link: relay.Relay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = start_hub(cloud, link, tmp_path_factory.mktemp("yurthub"))
    yield h
    stop_hub(h)


def wait_cloud(hub: Hub, reachable: bool) -> None:
    wait_for(
        f"yurthub to see the cloud {'back' if reachable else 'gone'}",
        lambda: hub.status()["cloud"]["reachable"] is reachable,
        timeout=30,
        interval=0.2,
    )
    time.sleep(0.2)
