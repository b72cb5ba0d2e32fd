"""`yurtctl get pools` / `get yurtappsets` rendering (`converter.sites`), from objects to text."""

from __future__ import annotations

from typing import Any

from converter import appset, names, sites

Obj = dict[str, Any]


def node(name: str, pool: str | None, ready: str, autonomous: bool = False) -> Obj:
    labels = {names.EDGE_WORKER_LABEL: "true"}
    if pool:
        labels[appset.NODEPOOL_LABEL] = pool
    annotations = {names.AUTONOMY_ANNOTATION: "true"} if autonomous else {}
    return {
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def nodepool(name: str, kind: str, **labels: str) -> Obj:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"type": kind}}


def yas(name: str, pools: list[str], per_pool: list[Obj], **status: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"pools": pools, "workload": {"workloadTemplate": {"deploymentTemplate": {}}}},
        "status": {"poolStatus": per_pool, **status},
    }


NODES = [
    node("hz-1", "hangzhou", "True", autonomous=True),
    node("hz-2", "hangzhou", "Unknown", autonomous=True),
    node("hz-3", "hangzhou", "False"),
    node("bj-1", "beijing", "True"),
    node("lone", None, "True"),
    node("orphan-1", "orphan", "Unknown"),
]
POOLS = [nodepool("hangzhou", "Edge"), nodepool("beijing", "Edge"), nodepool("cloud", "Cloud")]
YASES = [
    yas(
        "web",
        ["hangzhou", "beijing"],
        [{"pool": "hangzhou", "ready": True, "updated": True}, {"pool": "beijing", "ready": True, "updated": False}],
        totalWorkloads=2,
        readyWorkloads=2,
        updatedWorkloads=1,
        currentRevision="abc",
        conditions=[
            {"type": "AppReady", "status": "True"},
            {"type": "AppUpdated", "status": "False", "reason": "UpdateWorkloadError"},
        ],
    ),
    yas("db", ["hangzhou"], [{"pool": "hangzhou", "ready": False, "updated": True}]),
    yas("new", ["cloud"], []),
]


def test_get_pools_counts_nodes_readiness_autonomy_and_offline_per_pool_with_their_yurtappsets() -> None:
    text = sites.render_pools(sites.pool_rows(NODES, POOLS, YASES))
    assert text.splitlines() == [
        "POOL       TYPE    NODES   READY   UNREADY   AUTONOMOUS   OFFLINE   YURTAPPSETS",
        "beijing    Edge    1       1       0         0            0         shop/web:updating",
        "cloud      Cloud   0       0       0         0            0         shop/new:pending",
        "hangzhou   Edge    3       1       2         2            1         shop/db:unready,shop/web:ready",
        "orphan     -       1       0       1         0            1         -",
        "<none>     -       1       1       0         0            0         -",
    ]


def test_get_yurtappsets_shows_counts_and_only_the_conditions_that_need_a_look() -> None:
    lines = sites.render_appsets(YASES).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TOTAL", "READY", "UPDATED", "REVISION", "PROBLEMS"]
    assert lines[1].split() == ["shop", "db", "0", "0", "0", "-", "-"]
    assert lines[3].split() == ["shop", "web", "2", "2", "1", "abc", "AppUpdated=UpdateWorkloadError"]
