"""NodePools for tests and benchmarks of what reads them (YurtAppSet, `yurtctl get pools`): OpenYurt's NodePool
CRD (apps.openyurt.io/v1beta2, cluster-scoped) only as far as those readers need it (spec and status kept
as given), and NodePool objects. The NodePool controller's own CRD is the real one."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "nodepools.apps.openyurt.io"},
    "spec": {
        "group": "apps.openyurt.io",
        "names": {"kind": "NodePool", "listKind": "NodePoolList", "plural": "nodepools", "singular": "nodepool"},
        "scope": "Cluster",
        "versions": [
            {
                "name": "v1beta2",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def nodepool(name: str, kind: str = "Edge", **labels: str) -> Obj:
    return {
        "apiVersion": "apps.openyurt.io/v1beta2",
        "kind": "NodePool",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": kind},
    }
