"""yurt-manager's passes against the in-memory Api: what it writes to pods, CSRs and the Lease."""

from __future__ import annotations

import threading
from typing import Any

import prometheus_client as prom
import pytest

from converter import access, controller, csr, errors, informer, names
from tests.unit import access_contract
from tests.unit.csrfixtures import request_b64


def test_the_memory_api_keeps_the_contract() -> None:
    access_contract.check(access.MemoryApi(), "contract")


def manager(api: access.Api, identity: str = "a", elect: bool = True) -> controller.Manager:
    settings = controller.Settings(identity=identity, leader_elect=elect, resync_s=0)  # elect on every step
    return controller.Manager(api, settings, controller.Metrics(prom.CollectorRegistry()))


def add_node(api: access.MemoryApi, name: str, edge: bool, autonomous: bool) -> None:
    annotations = {names.AUTONOMY_ANNOTATION: "true"} if autonomous else {}
    labels = {names.EDGE_WORKER_LABEL: "true" if edge else "false"}
    api.create(
        controller.NODES,
        {
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]},
        },
    )


def add_pod(api: access.MemoryApi, name: str, node: str) -> None:
    tols = [
        {"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
        for k in (names.NOT_READY_TAINT, names.UNREACHABLE_TAINT)
    ]
    api.create(
        "/api/v1/namespaces/default/pods",
        {"metadata": {"name": name}, "spec": {"nodeName": node, "tolerations": tols}, "status": {"phase": "Running"}},
    )


def tol_seconds(api: access.Api, name: str) -> list[Any]:
    got = api.get(f"/api/v1/namespaces/default/pods/{name}")
    assert got is not None
    return [t.get("tolerationSeconds") for t in got["spec"]["tolerations"]]


def test_pods_on_autonomous_nodes_tolerate_forever_until_autonomy_is_turned_off() -> None:
    api = access.MemoryApi()
    add_node(api, "edge", edge=True, autonomous=True)
    add_node(api, "plain", edge=True, autonomous=False)
    add_pod(api, "on-edge", "edge")
    add_pod(api, "on-plain", "plain")
    m = manager(api)
    m.step()
    assert m.leading
    assert tol_seconds(api, "on-edge") == [None, None]
    assert tol_seconds(api, "on-plain") == [30, 30]
    api.patch(f"{controller.NODES}/edge", {"metadata": {"annotations": {names.AUTONOMY_ANNOTATION: None}}})
    m.step()
    assert tol_seconds(api, "on-edge") == [30, 30]
    pod = api.get("/api/v1/namespaces/default/pods/on-edge")
    assert pod is not None and not pod["metadata"].get("annotations")


def test_only_the_lease_holder_acts() -> None:
    api = access.MemoryApi()
    add_node(api, "edge", edge=True, autonomous=True)
    add_pod(api, "p", "edge")
    a, b = manager(api, "a"), manager(api, "b")
    b_first = b.elect(1_800_000_000.0)
    assert b_first
    a.step()
    assert not a.leading
    assert tol_seconds(api, "p") == [30, 30]
    b.release()
    a.step()
    assert a.leading and tol_seconds(api, "p") == [None, None]


def test_csrs_get_a_condition_with_the_reason() -> None:
    api = access.MemoryApi()
    add_node(api, "edge", edge=True, autonomous=True)
    for name, user in (("good", "system:node:edge"), ("bad", "system:node:other"), ("kubelets", "x")):
        labels = {} if name == "kubelets" else {"app.kubernetes.io/managed-by": "yurthub"}
        api.create(
            controller.CSRS,
            {
                "metadata": {"name": name, "labels": labels},
                "spec": {
                    "signerName": csr.SERVING_SIGNER,
                    "username": user,
                    "groups": ["system:nodes"],
                    "usages": ["digital signature", "server auth"],
                    "request": request_b64("system:node:edge", ["system:nodes"], ips=("10.0.0.5",)),
                },
            },
        )
    manager(api, elect=False).step()
    good, bad = api.get(f"{controller.CSRS}/good"), api.get(f"{controller.CSRS}/bad")
    assert good is not None and bad is not None
    assert [c["type"] for c in good["status"]["conditions"]] == ["Approved"]
    assert [(c["type"], c["reason"]) for c in bad["status"]["conditions"]] == [("Denied", "WrongRequester")]
    kubelets = api.get(f"{controller.CSRS}/kubelets")  # not yurthub's: left to another approver
    assert kubelets is not None and not kubelets.get("status")


def test_an_informer_keeps_its_copy_by_watching_and_lists_again_only_when_expired() -> None:
    api = access.MemoryApi()
    add_node(api, "a", edge=True, autonomous=True)
    changes: list[int] = []
    watched = informer.Informer(api, controller.NODES, lambda: changes.append(1), threading.Event())
    version = watched.relist()
    add_node(api, "b", edge=True, autonomous=False)
    api.patch(f"{controller.NODES}/a", {"metadata": {"labels": {"x": "1"}}})
    api.delete(f"{controller.NODES}/b")
    version = watched.follow(version)
    assert [n["metadata"]["name"] for n in watched.items()] == ["a"]
    assert watched.items()[0]["metadata"]["labels"]["x"] == "1"
    assert len(changes) == 4 and watched.lists == 1
    add_pod(api, "not-a-node", "a")  # another collection: no change here
    assert watched.follow(version) == version and len(changes) == 4
    with pytest.raises(errors.Expired):
        watched.follow("1")


def test_the_manager_decides_from_its_informers_copies() -> None:
    api = access.MemoryApi()
    add_node(api, "edge", edge=True, autonomous=True)
    m = manager(api)
    for path in (controller.NODES, controller.PODS, controller.CSRS):
        m.informers[path] = informer.Informer(api, path, m.wake.set, m.stopping)
    with pytest.raises(errors.Unreachable, match="not listed yet"):
        m.sync()
    versions = {path: watched.relist() for path, watched in m.informers.items()}
    add_pod(api, "p", "edge")
    m.step()
    assert tol_seconds(api, "p") == [30, 30]  # not seen yet: no watch event applied
    m.informers[controller.PODS].follow(versions[controller.PODS])
    assert m.wake.is_set()
    m.step()
    assert tol_seconds(api, "p") == [None, None]
