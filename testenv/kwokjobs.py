"""A second kwok controller for simulated nodes that also run pods: Job pods on them start and complete
(or, on nodes a test names, fail), and deleted pods go away. For benchmarks and tests that dispatch a Job
to each of many nodes (the converter's, conversion by label).

It manages only nodes annotated `kwok.x-k8s.io/node=jobs`, so the cluster's own kwok (nodes annotated
`fake`, which run nothing) is unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testenv import cgroups, kwok, process

VALUE = "jobs"

_RUN_STAGE = """\
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
"""


def _finish_stage(name: str, selector: str, delay_ms: int, state: str, phase: str) -> str:
    delay = f"  delay:\n    durationMilliseconds: {delay_ms}\n" if delay_ms else ""
    return f"""\
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: {name}
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
{selector}{delay}  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
{state}            startedAt: {{{{ $now | Quote }}}}
            finishedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: {phase}
"""


def pod_stages(failing: Sequence[str] = (), failure: str = "", complete_after_ms: int = 0) -> str:
    """The stages of the Jobs' pods: a pod starts, then its Job's pod completes (`complete_after_ms` after it
    started), or, on the nodes named in `failing`, fails a second after it started with the container message
    `failure` (what a node Job that rolled its node back leaves)."""
    nodes = json.dumps(list(failing))

    def node_is(op: str) -> str:
        return f"    - key: '.spec.nodeName'\n      operator: {op}\n      values: {nodes}\n"

    completed = "            exitCode: 0\n            reason: Completed\n"
    stages = _RUN_STAGE + _finish_stage(
        "pod-complete", node_is("NotIn") if failing else "", complete_after_ms, completed, "Succeeded"
    )
    if failing:
        failed = f"            exitCode: 1\n            reason: Error\n            message: {json.dumps(failure)}\n"
        stages += _finish_stage("pod-fail", node_is("In"), 1000, failed, "Failed")
    return stages


def start(bins: Path, kubeconfig: Path, directory: Path, group: cgroups.Group, *, stages: str = "") -> process.Process:
    """The controller, playing the Jobs' pods with `stages` (default: `pod_stages()`, every Job completes)."""
    return kwok.start(
        bins,
        kubeconfig,
        directory,
        group,
        name="kwok-jobs",
        value=VALUE,
        subnet="10.217",
        pod_stages=(stages or pod_stages()) + kwok.POD_DELETE_STAGE,
        extra=("--server-address=",),
    )


def node(name: str) -> dict[str, Any]:
    obj = kwok.node(name)
    obj["metadata"]["annotations"][kwok.ANNOTATION] = VALUE
    obj["metadata"]["labels"]["type"] = "kwok-jobs"
    return obj
