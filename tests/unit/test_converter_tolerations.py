"""The toleration decision of yurt-manager, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from converter import names, tolerations

NR, UR = names.NOT_READY_TAINT, names.UNREACHABLE_TAINT


def node(edge: str | None = "true", **annotations: str) -> dict[str, Any]:
    labels = {} if edge is None else {names.EDGE_WORKER_LABEL: edge}
    return {"metadata": {"name": "n1", "labels": labels, "annotations": annotations}}


def pod(nr: int | None = 300, ur: int | None = 300, **annotations: str) -> dict[str, Any]:
    tols: list[dict[str, Any]] = []
    for key, secs in ((NR, nr), (UR, ur)):
        t: dict[str, Any] = {"key": key, "operator": "Exists", "effect": "NoExecute"}
        if secs is not None:
            t["tolerationSeconds"] = secs
        tols.append(t)
    return {
        "metadata": {"name": "p", "namespace": "default", "resourceVersion": "7", "annotations": annotations},
        "spec": {"nodeName": "n1", "tolerations": tols},
        "status": {"phase": "Running"},
    }


def seconds(patch: dict[str, Any]) -> list[int | None]:
    return [t.get("tolerationSeconds") for t in patch["spec"]["tolerations"]]


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (node(**{names.AUTONOMY_ANNOTATION: "true"}), tolerations.Autonomy(None)),
        (node(**{names.AUTONOMY_ANNOTATION: "false"}), None),
        (node(edge="false", **{names.AUTONOMY_ANNOTATION: "true"}), None),
        (node(edge=None, **{names.AUTONOMY_ANNOTATION: "true"}), None),
        (node(**{names.AUTONOMY_DURATION_ANNOTATION: "0"}), tolerations.Autonomy(None)),
        (node(**{names.AUTONOMY_DURATION_ANNOTATION: "1h30m"}), tolerations.Autonomy(5400)),
        (node(**{names.AUTONOMY_DURATION_ANNOTATION: "-5s"}), tolerations.Autonomy(None)),
        (
            node(**{names.AUTONOMY_DURATION_ANNOTATION: "soon", names.AUTONOMY_ANNOTATION: "true"}),
            tolerations.Autonomy(None),
        ),
        (node(**{names.AUTONOMY_DURATION_ANNOTATION: "soon"}), None),
        (None, None),
    ],
)
def test_autonomy_of_a_node(n: dict[str, Any] | None, expected: tolerations.Autonomy | None) -> None:
    assert tolerations.autonomy_of(n) == expected


@pytest.mark.parametrize(("text", "secs"), [("90s", 90), ("1.5h", 5400), ("2m30s", 150), ("300ms", 0.3)])
def test_go_durations(text: str, secs: float) -> None:
    assert tolerations.parse_duration(text) == pytest.approx(secs)


@pytest.mark.parametrize("text", ["", "5", "m", "1x", "1h 2m", "h1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        tolerations.parse_duration(text)


def test_autonomy_makes_tolerations_forever_and_keeps_the_originals() -> None:
    patch = tolerations.desired_patch(pod(300, 200), tolerations.Autonomy(None))
    assert patch is not None
    assert seconds(patch) == [None, None]
    assert patch["metadata"] == {
        "resourceVersion": "7",
        "annotations": {names.ORIGINAL_NOT_READY: "300", names.ORIGINAL_UNREACHABLE: "200"},
    }


def test_a_duration_sets_those_seconds() -> None:
    patch = tolerations.desired_patch(pod(300, 300), tolerations.Autonomy(3600))
    assert patch is not None and seconds(patch) == [3600, 3600]


def test_turning_autonomy_off_restores_and_forgets_the_originals() -> None:
    rewritten = pod(None, None, **{names.ORIGINAL_NOT_READY: "300", names.ORIGINAL_UNREACHABLE: "200"})
    patch = tolerations.desired_patch(rewritten, None)
    assert patch is not None
    assert seconds(patch) == [300, 200]
    assert patch["metadata"]["annotations"] == {names.ORIGINAL_NOT_READY: None, names.ORIGINAL_UNREACHABLE: None}


def test_an_original_without_seconds_is_restored_as_forever() -> None:
    patch = tolerations.desired_patch(pod(None, 300, **{names.ORIGINAL_NOT_READY: ""}), None)
    assert patch is not None and seconds(patch) == [None, 300]


def test_nothing_to_do_when_in_line() -> None:
    done = pod(None, None, **{names.ORIGINAL_NOT_READY: "300", names.ORIGINAL_UNREACHABLE: "300"})
    assert tolerations.desired_patch(done, tolerations.Autonomy(None)) is None
    assert tolerations.desired_patch(pod(), None) is None
    assert tolerations.desired_patch(pod(None, None), tolerations.Autonomy(None)) is None


def test_changing_the_duration_keeps_the_first_originals() -> None:
    done = pod(None, None, **{names.ORIGINAL_NOT_READY: "300", names.ORIGINAL_UNREACHABLE: "300"})
    patch = tolerations.desired_patch(done, tolerations.Autonomy(60))
    assert patch is not None and seconds(patch) == [60, 60]
    assert "annotations" not in patch["metadata"]


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["metadata"].update(ownerReferences=[{"kind": "DaemonSet", "name": "ds"}]),
        lambda p: p["metadata"]["annotations"].update({"kubernetes.io/config.mirror": "x"}),
        lambda p: p["metadata"].update(deletionTimestamp="2026-01-01T00:00:00Z"),
        lambda p: p["status"].update(phase="Succeeded"),
        lambda p: p["spec"].pop("nodeName"),
    ],
)
def test_pods_left_alone(change: Any) -> None:
    p = pod()
    change(p)
    assert tolerations.desired_patch(p, tolerations.Autonomy(None)) is None


def test_other_tolerations_are_kept_in_place() -> None:
    p = pod()
    p["spec"]["tolerations"].insert(0, {"key": "x", "operator": "Equal", "value": "y", "effect": "NoSchedule"})
    patch = tolerations.desired_patch(p, tolerations.Autonomy(None))
    assert patch is not None
    assert patch["spec"]["tolerations"][0] == {"key": "x", "operator": "Equal", "value": "y", "effect": "NoSchedule"}
    assert len(patch["spec"]["tolerations"]) == 3
