"""yurt-manager's YurtAppSet shell (`converter.appsetcontroller`) over the in-memory Api: what it writes, and
that informers lagging behind its own writes never make it create a pool's Deployment twice."""

from __future__ import annotations

import threading
from typing import Any

import prometheus_client as prom
import pytest

from converter import access, appset, appsetcontroller, controller, informer, poolsync

Obj = dict[str, Any]
NS = "shop"


def seed(api: access.MemoryApi, pools: list[str]) -> None:
    for name in pools:
        api.create(appset.NODEPOOLS, {"metadata": {"name": name, "labels": {"site": "yes"}}, "spec": {"type": "Edge"}})
    api.create(
        f"/apis/apps.openyurt.io/v1beta1/namespaces/{NS}/yurtappsets",
        {
            "metadata": {"name": "web", "uid": "u1", "generation": 1},
            "spec": {
                "nodepoolSelector": {"matchLabels": {"site": "yes"}},
                "workload": {
                    "workloadTemplate": {
                        "deploymentTemplate": {
                            "spec": {
                                "selector": {"matchLabels": {"app": "web"}},
                                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}},
                            }
                        }
                    }
                },
            },
        },
    )


def deployments(api: access.MemoryApi) -> list[Obj]:
    return api.list(f"/apis/apps/v1/namespaces/{NS}/deployments")


def never_stops() -> None:
    return None


def test_a_pass_creates_one_deployment_per_pool_and_writes_the_status() -> None:
    api = access.MemoryApi()
    seed(api, ["a", "b"])
    shell = appsetcontroller.AppSets(api, never_stops, lambda: None, threading.Event())
    shell.sync()
    made = deployments(api)
    assert sorted(d["metadata"]["labels"][appset.POOL_NAME_LABEL] for d in made) == ["a", "b"]
    assert all(
        d["metadata"]["name"].startswith(f"web-{d['metadata']['labels'][appset.POOL_NAME_LABEL]}-") for d in made
    )
    yas = api.get(f"/apis/apps.openyurt.io/v1beta1/namespaces/{NS}/yurtappsets/web")
    assert yas is not None and yas["status"]["totalWorkloads"] == 2
    shell.sync()
    assert len(deployments(api)) == 2


def test_an_informer_that_has_not_seen_a_created_deployment_yet_does_not_cause_a_second_one() -> None:
    api = access.MemoryApi()
    seed(api, ["a", "b"])
    stopping = threading.Event()
    shell = appsetcontroller.AppSets(api, never_stops, lambda: None, stopping)
    for path in appsetcontroller.PATHS:  # listed once, then never followed: a watch that lags behind
        watched = informer.Informer(api, path, lambda: None, stopping)
        watched.relist()
        shell.informers[path] = watched
    shell.sync()
    shell.sync()
    shell.sync()
    assert len(deployments(api)) == 2


def test_a_replica_that_does_not_lead_writes_nothing() -> None:
    api = access.MemoryApi()
    seed(api, ["a"])

    def not_leading() -> None:
        raise controller.NotLeading("the Lease is someone else's")

    shell = appsetcontroller.AppSets(api, not_leading, lambda: None, threading.Event())
    with pytest.raises(controller.NotLeading):
        shell.sync()
    assert deployments(api) == []


def test_without_the_crds_a_pass_skips_yurtappsets() -> None:
    shell = appsetcontroller.AppSets(access.MemoryApi(), never_stops, lambda: None, threading.Event())
    shell.sync()  # nothing listed, nothing written, no error


def test_yurt_manager_lists_and_watches_nodepools_once_for_both_the_pool_pass_and_the_yurtappsets() -> None:
    api = access.MemoryApi()
    seed(api, ["a", "b"])
    registry = prom.CollectorRegistry()
    m = controller.Manager(api, controller.Settings(identity="a", leader_elect=False), controller.Metrics(registry))
    made = m.make_informers()
    assert [w.path for w in made].count(appset.NODEPOOLS) == 1
    assert len({w.path for w in made}) == len(made), "one informer per collection"
    assert m.appsets.informers[appset.NODEPOOLS] is m.informers[poolsync.POOLS]
    for watched in made:
        watched.relist()
    assert registry.get_sample_value("yurt_manager_lists_total", {"resource": "nodepools"}) == 1
    m.sync()  # both passes read the one copy: the pool pass writes the pools' status, the shell the Deployments
    assert len(deployments(api)) == 2
    pool = api.get(f"{appset.NODEPOOLS}/a")
    assert pool is not None and pool["status"]["nodes"] == []


def events(api: access.MemoryApi) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about YurtAppSet `web`, as `kubectl describe` selects them."""
    return sorted(
        (e["type"], e["reason"], e["message"])
        for e in api.list(f"/api/v1/namespaces/{NS}/events")
        if e["involvedObject"]
        == {
            "apiVersion": "apps.openyurt.io/v1beta1",
            "kind": "YurtAppSet",
            "name": "web",
            "namespace": NS,
            "uid": "u1",
        }
    )


def test_each_deployment_written_is_an_event_on_the_yurtappset() -> None:
    api = access.MemoryApi()
    seed(api, ["a", "b"])
    shell = appsetcontroller.AppSets(api, never_stops, lambda: None, threading.Event())
    shell.sync()
    made = {d["metadata"]["labels"][appset.POOL_NAME_LABEL]: d["metadata"]["name"] for d in deployments(api)}
    created = [("Normal", "WorkloadCreated", f"Deployment {made[p]} of pool {p} created") for p in ("a", "b")]
    assert events(api) == created
    shell.sync()
    assert events(api) == created, "nothing written, nothing told"
    path = f"/apis/apps.openyurt.io/v1beta1/namespaces/{NS}/yurtappsets/web"
    api.patch(path, {"spec": {"pools": ["a"], "nodepoolSelector": None}})  # b no longer selected
    shell.sync()
    assert ("Normal", "WorkloadDeleted", f"Deployment {made['b']} of pool b deleted") in events(api)


def test_a_refusal_is_told_once_as_a_warning_and_again_only_when_it_comes_back() -> None:
    api = access.MemoryApi()
    seed(api, ["a"])
    path = f"/apis/apps.openyurt.io/v1beta1/namespaces/{NS}/yurtappsets/web"
    stateful = {"spec": {"workload": {"workloadTemplate": {"statefulSetTemplate": {"spec": {}}}}}}
    api.patch(path, stateful)
    shell = appsetcontroller.AppSets(api, never_stops, lambda: None, threading.Event())
    for _ in range(3):
        shell.sync()
    warning = ("Warning", "UnsupportedWorkload", appset.template_problem(api.get(path) or {})[1])  # type: ignore[index]
    assert events(api) == [warning]
    api.patch(path, {"spec": {"workload": {"workloadTemplate": {"statefulSetTemplate": None}}}})
    shell.sync()
    assert [e[1] for e in events(api)] == ["WorkloadCreated", "UnsupportedWorkload"]
    api.patch(path, stateful)
    shell.sync()
    shell.sync()
    assert [e[1] for e in events(api)] == ["WorkloadCreated", "UnsupportedWorkload", "UnsupportedWorkload"]
