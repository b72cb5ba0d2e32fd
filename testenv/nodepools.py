"""NodePools for tests and benchmarks: NodePool objects (the CRD is the one `yurtctl convert` installs,
`converter.components.nodepool_crd`), and simulated pool members that run pods.

`start_kwok` is a kwok controller of its own for nodes annotated `kwok.x-k8s.io/node=pools` (`node`): their
pods start at once with a pod IP and Ready, so EndpointSlices list them with their node's name, as Service
topology needs; deleted pods go away. The cluster's own kwok (nodes that run nothing) and `kwokjobs` (Job
pods complete) are unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from converter import nodepool as pools
from testenv import cgroups, kwok, process

Obj = dict[str, Any]

KWOK_VALUE = "pools"

POD_STAGES = """\
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.podIP'
      operator: DoesNotExist
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - type: Initialized
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      - type: ContainersReady
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      - type: Ready
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
"""


def start_kwok(bins: Path, kubeconfig: Path, directory: Path, group: cgroups.Group) -> process.Process:
    return kwok.start(
        bins,
        kubeconfig,
        directory,
        group,
        name="kwok-pools",
        value=KWOK_VALUE,
        subnet="10.218",
        pod_stages=POD_STAGES + kwok.POD_DELETE_STAGE,
        extra=("--server-address=",),
    )


def node(name: str, pool: str = "", *, edge: bool | None = None) -> Obj:
    """A simulated node `start_kwok` runs pods on, labelled into `pool` (none: "") and, unless `edge` is None,
    with `openyurt.io/is-edge-worker`."""
    obj = kwok.node(name)
    obj["metadata"]["annotations"][kwok.ANNOTATION] = KWOK_VALUE
    obj["metadata"]["labels"]["type"] = "kwok-pools"
    if pool:
        obj["metadata"]["labels"][pools.POOL_LABEL] = pool
    if edge is not None:
        obj["metadata"]["labels"][pools.EDGE_WORKER_LABEL] = "true" if edge else "false"
    return obj


def nodepool(name: str, kind: str = "Edge", *, spec: Obj | None = None, **labels: str) -> Obj:
    return {
        "apiVersion": f"{pools.GROUP}/{pools.VERSION}",
        "kind": "NodePool",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": kind, **(spec or {})},
    }
