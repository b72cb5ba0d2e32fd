"""Simulated nodes: kwok keeps any number of Node objects Ready (status and Lease) without machines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testenv import cgroups, process

ANNOTATION = "kwok.x-k8s.io/node"
TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}

# Stages are kwok's state machine: a new node becomes Ready at once, and kwok renews its status now and then
# (the node Lease, renewed by kwok itself, is what the node lifecycle controller watches).
_NODE_CONDITIONS = """\
      {{ $now := Now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ or $.metadata.creationTimestamp $now | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
      addresses:
      {{ with NodeIP }}
      - address: {{ . | Quote }}
        type: InternalIP
      {{ end }}
      {{ with NodeName }}
      - address: {{ . | Quote }}
        type: Hostname
      {{ end }}
"""

STAGES = f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: NotIn
      values: ['True']
  next:
    statusTemplate: |
{_NODE_CONDITIONS}\
      allocatable: {{cpu: "32", memory: 256Gi, pods: "110"}}
      capacity: {{cpu: "32", memory: 256Gi, pods: "110"}}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: kwok-{{{{ Version }}}}
        containerRuntimeVersion: kwok-{{{{ Version }}}}
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: In
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: In
      values: ['True']
  delay:
    durationMilliseconds: 60000
    jitterDurationMilliseconds: 70000
  next:
    statusTemplate: |
{_NODE_CONDITIONS}\
"""


POD_DELETE_STAGE = """\
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: Exists
  next:
    finalizers:
      empty: true
    delete: true
"""
"""The stage that removes a deleted pod of a kwok node, for controllers that also play their nodes' pods."""


def start(
    bins: Path,
    kubeconfig: Path,
    directory: Path,
    group: cgroups.Group,
    *,
    name: str = "kwok",
    value: str = "fake",
    subnet: str = "10.216",
    pod_stages: str = "",
    extra: tuple[str, ...] = (),
) -> process.Process:
    """A kwok controller for the nodes annotated `ANNOTATION=value`, its node IPs and pod CIDR in `subnet`/16;
    `pod_stages` (after the node stages) make it play those nodes' pods too."""
    stages = directory / f"{name}-stages.yaml"
    stages.parent.mkdir(parents=True, exist_ok=True)
    stages.write_text(STAGES + pod_stages)
    return process.Process(
        name,
        [
            str(bins / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={stages}",
            f"--manage-nodes-with-annotation-selector={ANNOTATION}={value}",
            "--node-lease-duration-seconds=40",
            f"--cidr={subnet}.0.0/16",
            f"--node-ip={subnet}.255.254",
            *extra,
        ],
        group=group,
        log_dir=directory / "logs",
    )


def node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        },
        "spec": {"taints": [TAINT]},
    }
