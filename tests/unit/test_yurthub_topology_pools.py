"""servicetopology's pool members: from the NodePool, else the pool label's nodes, else this node alone."""

from __future__ import annotations

import json

import pytest

from yurthub import storage, topology

NODE = json.dumps({"metadata": {"name": "edge-1", "labels": {"apps.openyurt.io/nodepool": "site-a"}}}).encode()
SERVICES = json.dumps({"items": []}).encode()
POOL = json.dumps({"status": {"nodes": ["edge-1", "edge-2"]}}).encode()
LABELLED = json.dumps({"items": [{"metadata": {"name": "edge-1"}}, {"metadata": {"name": "edge-9"}}]}).encode()


async def in_store(fn: object, *args: object) -> object:
    return fn(*args)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("pool", "labelled", "members", "source"),
    [
        (POOL, LABELLED, {"edge-1", "edge-2"}, "nodepool"),  # the NodePool wins over labels
        (None, LABELLED, {"edge-1", "edge-9"}, "labels"),  # no NodePool readable: as before NodePools
        (None, None, {"edge-1"}, "node-only"),  # neither (stock Node authorization, no pool): this node
    ],
)
async def test_pool_members_come_from_the_nodepool_first(
    pool: bytes | None, labelled: bytes | None, members: set[str], source: str
) -> None:
    answers = {
        "/api/v1/nodes/edge-1": NODE,
        "/api/v1/services": SERVICES,
        f"{topology.NODEPOOLS}/site-a": pool,
        "/api/v1/nodes?labelSelector=apps.openyurt.io%2Fnodepool%3Dsite-a": labelled,
    }
    asked: list[str] = []

    async def fetch(path: str) -> bytes | None:
        asked.append(path)
        return answers[path]

    src = topology.FactsSource("edge-1", "apps.openyurt.io/nodepool", storage.MemoryStorage(), fetch, in_store)
    facts = await src.get()
    assert facts is not None and facts.pool_nodes == members
    assert src.pool_source == source
    if pool is not None:
        assert not any("labelSelector" in p for p in asked)  # no list of nodes needed
