"""Leader election on a coordination.k8s.io Lease: the decision is pure, the shell in `controller` writes it.

One holder at a time: a candidate takes the Lease when it is free (no holder) or expired (not renewed for
`leaseDurationSeconds`), and the holder renews it. Writes carry the Lease's resourceVersion, so of two
candidates racing for an expired Lease exactly one wins and the other sees a conflict. A holder that cannot
renew within its lease duration stops acting before anyone else can take over (it counts from its last
successful renewal on its own clock, so it steps down no later than a rival can step up).
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

Obj = dict[str, Any]


def micro_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


def next_lease(current: Obj | None, me: str, now: float, duration: int, name: str, namespace: str) -> Obj | None:
    """The Lease to write for `me` at `now`, or None when another live holder has it.

    `current` None means no Lease exists (create it). The result keeps `current`'s resourceVersion."""
    if current is None:
        spec: Obj = {}
        lease: Obj = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    else:
        lease = copy.deepcopy(current)
        spec = lease.setdefault("spec", {})
    holder = spec.get("holderIdentity") or ""
    renewed = parse_time(spec.get("renewTime")) or 0.0
    held_for = int(spec.get("leaseDurationSeconds") or duration)
    if holder and holder != me and now < renewed + held_for:
        return None
    if holder != me:
        spec["holderIdentity"] = me
        spec["acquireTime"] = micro_time(now)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
    spec["leaseDurationSeconds"] = duration
    spec["renewTime"] = micro_time(now)
    return lease


def released(current: Obj, me: str) -> Obj | None:
    """The Lease to write when `me` steps down on purpose (so a standby takes over at once), or None if
    `me` does not hold it."""
    if current.get("spec", {}).get("holderIdentity") != me:
        return None
    lease = copy.deepcopy(current)
    lease["spec"]["holderIdentity"] = ""
    lease["spec"]["leaseDurationSeconds"] = 1
    return lease
