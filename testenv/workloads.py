"""Workloads the tests and the demo run on the real node: Deployments and Pods of the locally packed busybox
image."""

from __future__ import annotations

from typing import Any

from testenv import images, kwok


def deployment(name: str, script: str, *, namespace: str = "default", replicas: int = 1) -> dict[str, Any]:
    """A Deployment whose pods (label `app=<name>`) run `script` with busybox's sh."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {"name": "main", "image": images.BUSYBOX_IMAGE, "command": ["/bin/sh", "-c", script]}
                    ],
                },
            },
        },
    }


def pod(name: str, node: str) -> dict[str, Any]:
    """A Pod (namespace `default`) whose container `main` sleeps, bound to `node` (kwok's taint tolerated)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 2,
            "tolerations": [kwok.TAINT | {"operator": "Equal"}],
            "containers": [
                {"name": "main", "image": images.BUSYBOX_IMAGE, "command": ["/bin/sh", "-c", "exec sleep 100000"]}
            ],
        },
    }
