"""End-to-end fixtures: a real cluster per test module (so one module's damage never leaks into another)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from testenv import cluster

log = logging.getLogger(__name__)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def cluster_settings() -> cluster.Settings:
    """Override in a test module to change what its cluster looks like."""
    return cluster.Settings()


@pytest.fixture(scope="module")
def kube(cluster_settings: cluster.Settings) -> Iterator[cluster.Cluster]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests boot a real node and need root (namespaces, cgroups, veth)")
    with cluster.Cluster.start(cluster_settings) as c:
        yield c
