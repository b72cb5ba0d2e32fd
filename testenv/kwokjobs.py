"""A second kwok controller for simulated nodes that also run pods: Job pods on them start and complete,
and deleted pods go away. For benchmarks that dispatch a Job to each of many nodes (the converter's).

It manages only nodes annotated `kwok.x-k8s.io/node=jobs`, so the cluster's own kwok (nodes annotated
`fake`, which run nothing) is unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testenv import cgroups, kwok, process

VALUE = "jobs"

POD_STAGES = """\
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-run
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.phase'
      operator: NotIn
      values: ['Running', 'Succeeded', 'Failed']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
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
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: DoesNotExist
    - key: '.status.phase'
      operator: In
      values: ['Running']
    - key: '.metadata.ownerReferences.[].kind'
      operator: In
      values: ['Job']
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            reason: Completed
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
"""


def start(bins: Path, kubeconfig: Path, directory: Path, group: cgroups.Group) -> process.Process:
    return kwok.start(
        bins,
        kubeconfig,
        directory,
        group,
        name="kwok-jobs",
        value=VALUE,
        subnet="10.217",
        pod_stages=POD_STAGES + kwok.POD_DELETE_STAGE,
        extra=("--server-address=",),
    )


def node(name: str) -> dict[str, Any]:
    obj = kwok.node(name)
    obj["metadata"]["annotations"][kwok.ANNOTATION] = VALUE
    obj["metadata"]["labels"]["type"] = "kwok-jobs"
    return obj
