"""convert/revert plans and preflight, as tables over cluster states; the dry run on the in-memory Api."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from converter import access, cli, components, jointoken, names, nodeconversion, nodestep, plan, runner

VERSION = {"major": "1", "minor": "34", "gitVersion": "v1.34.12"}


def node(name: str, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


NODES = [node("cloud-1"), node("edge-1"), node("edge-2")]
OPTS = plan.Options(cloud_nodes=("cloud-1",))


def test_a_stock_cluster_passes_preflight() -> None:
    assert plan.preflight(OPTS, NODES, VERSION, None) == []


def test_preflight_names_every_problem() -> None:
    opts = plan.Options(cloud_nodes=("cloud-1", "ghost"), edge_nodes=("cloud-1",), autonomous_nodes=("edge-2",))
    nodes = [node("cloud-1"), node("edge-1", labels={names.EDGE_WORKER_LABEL: "true"}), node("edge-2")]
    problems = plan.preflight(opts, nodes, {"major": "1", "minor": "21"}, None)
    text = "\n".join(problems)
    assert "not supported" in text
    assert "cloud nodes not in the cluster: ghost" in text
    assert "both cloud and edge: cloud-1" in text
    assert "autonomous nodes that are not edge nodes: edge-2" in text
    assert "no conversion is recorded" in text


def test_edge_nodes_must_be_ready_unless_already_converted() -> None:
    nodes = [node("cloud-1"), node("edge-1", ready=False)]
    assert any("not Ready: edge-1" in p for p in plan.preflight(OPTS, nodes, VERSION, None))
    record = {"data": {"options": OPTS.recorded(), "node.edge-1": "converted"}}
    assert plan.preflight(OPTS, nodes, VERSION, record) == []


def test_a_record_with_other_options_blocks_a_new_convert() -> None:
    record = {"data": {"options": plan.Options(cloud_nodes=("edge-1",)).recorded()}}
    assert any("other options" in p for p in plan.preflight(OPTS, NODES, VERSION, record))


def test_convert_plan_labels_every_node_and_hands_edge_nodes_to_yurt_manager_last() -> None:
    p = plan.convert_plan(OPTS, NODES, None, retry="run-1")
    assert p.edge == ["edge-1", "edge-2"] and p.cloud == ["cloud-1"] and p.autonomous == ["edge-1", "edge-2"]
    assert p.nodes == ["edge-1", "edge-2"]
    patches = {c.path: c.body for c in p.before if c.verb == "patch"}
    assert patches == {"/api/v1/nodes/cloud-1": {"metadata": {"labels": {names.EDGE_WORKER_LABEL: "false"}}}}
    labels = {c.path: c.body for c in p.labels}
    assert labels["/api/v1/nodes/edge-1"] == {
        "metadata": {
            "labels": {names.EDGE_WORKER_LABEL: "true"},
            "annotations": {names.AUTONOMY_ANNOTATION: "true", nodeconversion.RETRY: "run-1"},
        }
    }
    settings = next(c.body for c in p.before if nodeconversion.SETTINGS_CONFIGMAP in c.what)
    assert nodeconversion.parse_settings(settings) == OPTS.job_settings()
    kinds = [c.body["kind"] for c in p.before if c.verb == "apply" and c.body and "yurt-manager" in c.what]
    assert kinds == [
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Secret",
        "Service",
        "MutatingWebhookConfiguration",
    ]


def test_a_resumed_convert_skips_converted_nodes() -> None:
    record = {"data": {"options": OPTS.recorded(), "node.edge-1": "converted", "node.edge-2": "failed"}}
    p = plan.convert_plan(OPTS, NODES, record)
    assert p.nodes == ["edge-2"] and p.skipped == ["edge-1"]
    assert not any(c.what.startswith(f"ConfigMap kube-system/{plan.RECORD}") for c in p.before)
    assert [c.path for c in p.labels if nodeconversion.RETRY in c.body["metadata"]["annotations"]] == [
        "/api/v1/nodes/edge-2"
    ]  # a converted node is not asked again


def test_revert_plan_undoes_labels_tolerations_components_and_the_record() -> None:
    converted = node("edge-1", labels={names.EDGE_WORKER_LABEL: "true"})
    converted["status"]["conditions"].append({"type": nodeconversion.CONDITION, "reason": nodeconversion.CONVERTED})
    labelled = [
        node("cloud-1", labels={names.EDGE_WORKER_LABEL: "false"}),
        converted,
        node("edge-never-converted", labels={names.EDGE_WORKER_LABEL: "true"}),
        node("other"),
    ]
    rewritten = {
        "metadata": {
            "name": "p",
            "namespace": "default",
            "resourceVersion": "3",
            "annotations": {names.ORIGINAL_NOT_READY: "300"},
        },
        "spec": {
            "nodeName": "edge-1",
            "tolerations": [{"key": names.NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}],
        },
        "status": {"phase": "Running"},
    }
    csrs = [
        {"metadata": {"name": "yurthub-serving-a"}, "spec": {"username": "system:node:edge-1"}},
        {"metadata": {"name": "yurthub-serving-b"}, "spec": {"username": "system:node:somewhere-else"}},
    ]
    p = plan.revert_plan(labelled, [rewritten], {"data": {}}, csrs, retry="run-2")
    assert p.nodes == ["edge-1"] and p.skipped == ["edge-never-converted"]
    assert [(c.path, c.body) for c in p.labels] == [
        (
            "/api/v1/nodes/edge-1",
            {
                "metadata": {
                    "labels": {names.EDGE_WORKER_LABEL: "false"},
                    "annotations": {nodeconversion.RETRY: "run-2"},
                }
            },
        )
    ]
    whats = [c.what for c in p.after]
    assert "CertificateSigningRequest yurthub-serving-a (made by system:node:edge-1's yurthub)" in whats
    assert not any("yurthub-serving-b" in w for w in whats)  # not an edge node convert touched
    # yurt-manager goes before the nodes' labels and the pods' tolerations, so nothing acts on them again
    manager = whats.index("Deployment kube-system/yurt-manager")
    assert manager < whats.index("Pod default/p: original tolerations restored")
    assert manager < next(i for i, w in enumerate(whats) if w.startswith("Node edge-1: label"))
    assert f"Node edge-1: condition {nodeconversion.CONDITION} removed" in whats
    assert any(w.startswith("Node cloud-1: label") for w in whats) and not any("other" in w for w in whats)
    assert whats[-1] == f"ConfigMap kube-system/{plan.RECORD}"


def test_revert_plan_deletes_the_csrs_of_a_node_yurt_manager_reverted_when_its_label_went() -> None:
    unlabelled = node("edge-1")  # converted by label, then unlabelled: yurt-manager reverted it
    unlabelled["status"]["conditions"].append({"type": nodeconversion.CONDITION, "reason": nodeconversion.REVERTED})
    csrs = [
        {"metadata": {"name": "yurthub-serving-a"}, "spec": {"username": "system:node:edge-1"}},
        {"metadata": {"name": "yurthub-serving-b"}, "spec": {"username": "system:node:other"}},
    ]
    p = plan.revert_plan(
        [node("cloud-1", labels={names.EDGE_WORKER_LABEL: "false"}), unlabelled, node("other")], [], {"data": {}}, csrs
    )
    assert p.nodes == [] and p.labels == []  # reverted already: no Job
    whats = [c.what for c in p.after]
    assert "CertificateSigningRequest yurthub-serving-a (made by system:node:edge-1's yurthub)" in whats
    assert not any("yurthub-serving-b" in w for w in whats)


def cluster() -> access.MemoryApi:
    api = access.MemoryApi()
    api.objects[("/version", "", "", "")] = VERSION
    for n in NODES:
        api.create("/api/v1/nodes", n)
    return api


def test_dry_run_prints_everything_and_changes_nothing() -> None:
    api = cluster()
    before = {k: dict(v) for k, v in api.objects.items()}
    out = io.StringIO()
    code = runner.convert(api, OPTS, runner.RunSettings(identity="t"), out, dry_run=True)
    assert code == 0
    text = out.getvalue()
    assert "Node edge-2: label openyurt.io/is-edge-worker=true" in text
    assert "Job kube-system/yurtctl-convert-edge-1" in text
    assert "/var/lib/kubelet/kubeadm-flags.env" in text
    assert api.objects == before


def test_a_failed_preflight_changes_nothing_and_says_why() -> None:
    api = cluster()
    before = {k: dict(v) for k, v in api.objects.items()}
    out = io.StringIO()
    code = runner.convert(
        api, plan.Options(cloud_nodes=("nope",)), runner.RunSettings(identity="t"), out, dry_run=False
    )
    assert code == 1
    assert "cloud nodes not in the cluster: nope" in out.getvalue()
    assert api.objects == before


def test_a_held_lock_stops_a_second_run() -> None:
    api = cluster()
    runner.Lock(api, "first").acquire(0)
    out = io.StringIO()
    try:
        runner.convert(api, OPTS, runner.RunSettings(identity="second", lock_wait_s=0), out, dry_run=False)
    except runner.errors.LockHeld as exc:
        assert "first" in str(exc)
    else:
        raise AssertionError("the second run went ahead")


def test_a_planned_pod_restore_still_lands_when_the_pod_changed_meanwhile() -> None:
    api = cluster()
    pods = "/api/v1/namespaces/default/pods"
    api.create(
        pods,
        {
            "metadata": {"name": "p", "annotations": {names.ORIGINAL_NOT_READY: "300"}},
            "spec": {
                "nodeName": "edge-1",
                "tolerations": [{"key": names.NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}],
            },
            "status": {"phase": "Running"},
        },
    )
    after = plan.revert_plan(api.list("/api/v1/nodes"), api.list("/api/v1/pods"), None).after
    planned = next(c for c in after if c.what.startswith("Pod default/p"))
    api.patch(f"{pods}/p", {"status": {"phase": "Running", "podIP": "10.0.0.9"}})  # kubelet reports meanwhile
    runner.apply_change(api, planned)
    got = api.get(f"{pods}/p")
    assert got is not None
    assert got["spec"]["tolerations"][0]["tolerationSeconds"] == 300
    assert not got["metadata"].get("annotations")


TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 - a made-up token in the documented shape


def test_the_join_token_reaches_the_node_jobs_through_a_secret_never_through_their_spec() -> None:
    opts = dataclasses.replace(OPTS, join_token=TOKEN)
    p = plan.convert_plan(opts, NODES, None)
    args = runner.node_args(opts)
    assert f"--join-token-file={nodestep.STAGED_TOKEN}" in args
    for name in p.nodes:
        job = p.job(name, opts.image, args)
        spec = json.dumps(job)
        assert TOKEN not in spec and base64.b64encode(TOKEN.encode()).decode() not in spec
        pod = job["spec"]["template"]["spec"]
        assert {"name": "join-token", "mountPath": components.JOIN_TOKEN_MOUNT, "readOnly": True} in pod["containers"][
            0
        ]["volumeMounts"]
        volume = next(v for v in pod["volumes"] if v["name"] == "join-token")
        assert volume["secret"]["secretName"] == components.JOIN_TOKEN_SECRET
        assert volume["secret"]["defaultMode"] == 0o400
        assert all("env" not in c for c in pod["containers"])
    secret = [
        c
        for c in p.before
        if c.body is not None and c.body.get("kind") == "Secret" and _name(c.body) == components.JOIN_TOKEN_SECRET
    ]
    assert len(secret) == 1 and base64.b64decode(secret[0].body["data"]["token"]).decode() == TOKEN  # type: ignore[index]
    assert f"/api/v1/namespaces/kube-system/secrets/{components.JOIN_TOKEN_SECRET}" in [
        c.path for c in p.after if c.verb == "delete"
    ]
    out = io.StringIO()
    assert runner.convert(cluster(), opts, runner.RunSettings(identity="t"), out, dry_run=True) == 0
    assert TOKEN not in out.getvalue() and nodestep.HUB_TOKEN in out.getvalue()
    assert TOKEN not in repr(opts) and TOKEN not in opts.recorded()
    # without a token nothing is mounted and no Secret is made
    bare = plan.convert_plan(OPTS, NODES, None)
    assert "join-token" not in json.dumps(bare.job("edge-1", OPTS.image, runner.node_args(OPTS)))
    assert not [
        c
        for c in bare.before + bare.after
        if components.JOIN_TOKEN_SECRET in c.path
        or (c.body is not None and _name(c.body) == components.JOIN_TOKEN_SECRET)
    ]


def test_a_join_token_in_the_hub_args_is_refused_before_anything_changes() -> None:
    opts = dataclasses.replace(OPTS, hub_args=f"--join-token={TOKEN}")
    problems = plan.preflight(opts, NODES, VERSION, None)
    assert any("give it with --join-token-file" in p for p in problems)
    assert all(TOKEN not in p for p in problems)


def test_revert_removes_a_join_token_secret_a_failed_convert_left() -> None:
    p = plan.revert_plan([node("edge-1", labels={names.EDGE_WORKER_LABEL: "true"})], [], {"data": {}})
    assert f"/api/v1/namespaces/kube-system/secrets/{components.JOIN_TOKEN_SECRET}" in [
        c.path for c in p.after if c.verb == "delete"
    ]
    assert plan.node_job("revert", "edge-1", "i", [], tunnel=False, join_token=True)["spec"]["template"]["spec"][
        "volumes"
    ] == [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}]


def test_yurtctl_convert_refuses_a_bad_join_token_file_before_touching_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readable = tmp_path / "readable"
    readable.write_text(TOKEN + "\n")
    readable.chmod(0o644)
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    wrong = tmp_path / "wrong"
    wrong.write_text("abcdef\n")
    wrong.chmod(0o600)
    cases = [(tmp_path / "missing", "no such file"), (readable, "chmod 600"), (empty, "empty"), (wrong, "expected a")]
    for path, complaint in cases:
        argv = ["--kubeconfig", str(tmp_path / "no-such-kubeconfig"), "convert", "--cloud-nodes", "c"]
        assert cli.yurtctl_main([*argv, "--join-token-file", str(path), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert f"--join-token-file {path}: " in err and complaint in err, err
        assert TOKEN not in err
    good = tmp_path / "good"
    fd = os.open(good, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, TOKEN.encode() + b"\n")
    os.close(fd)
    assert jointoken.read(str(good)) == TOKEN


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))
