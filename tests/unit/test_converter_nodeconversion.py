"""Conversion by label: the pure decision (node, pools, Job -> next step) as a table, then the pass on the
in-memory Api, Jobs played by hand: started a few at a time, outcomes as a node condition and Events, a
failure not tried again until asked, and what a node can and cannot make yurt-manager run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from converter import access, components, conversionsync, names, nodeconversion, nodepool, plan

NC = nodeconversion
SETTINGS = NC.JobSettings(image="registry.local/yurt-edge:1", hub_args="--v=2", node_timeout_s=300, parallel=2)


def node(
    name: str = "n1",
    edge: str | None = "true",
    reason: str = "",
    annotations: dict[str, str] | None = None,
    pool: str = "",
) -> dict[str, Any]:
    labels = {names.EDGE_WORKER_LABEL: edge} if edge is not None else {}
    if pool:
        labels[nodepool.POOL_LABEL] = pool
    conditions = [{"type": "Ready", "status": "True"}]
    if reason:
        conditions.append({"type": NC.CONDITION, "status": "False", "reason": reason, "message": "m"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": annotations or {}},
        "status": {"conditions": conditions},
    }


def job(action: NC.Action, phase: str, retry: str = "", age_s: float = 0.0) -> NC.JobState:
    return NC.JobState(action, phase, retry, age_s)  # type: ignore[arg-type]  # the table spells phases


@pytest.mark.parametrize(
    ("n", "pools", "j", "expected"),
    [
        # a fresh edge node is converted; a fresh other node is never touched
        (node(), {}, None, ("start", "convert")),
        (node(edge="false"), {}, None, ("none", None)),
        (node(edge=None), {}, None, ("none", None)),
        # membership of an Edge pool makes an edge node, of a Cloud pool not; an explicit false wins
        (node(edge=None, pool="shop"), {"shop": "Edge"}, None, ("start", "convert")),
        (node(edge=None, pool="hall"), {"hall": "Cloud"}, None, ("none", None)),
        (node(edge="false", pool="shop"), {"shop": "Edge"}, None, ("none", None)),
        (node(edge=None, pool="gone"), {}, None, ("none", None)),
        # done, and stays done
        (node(reason=NC.CONVERTED), {}, None, ("none", None)),
        # unlabelled after conversion (or a failed one): reverted; reverted: left alone
        (node(edge="false", reason=NC.CONVERTED), {}, None, ("start", "revert")),
        (node(edge=None, reason=NC.CONVERT_FAILED), {}, None, ("start", "revert")),
        (node(edge=None, reason=NC.REVERTED), {}, None, ("none", None)),
        # a Job running: wait for it, whatever the label says meanwhile; one running too long: stopped
        (node(reason=NC.CONVERTING), {}, job("convert", "running", age_s=10), ("wait", "convert")),
        (node(edge="false", reason=NC.CONVERTING), {}, job("convert", "running"), ("wait", "convert")),
        (node(reason=NC.CONVERTING), {}, job("convert", "running", age_s=301), ("timed-out", "convert")),
        # outcomes recorded
        (node(reason=NC.CONVERTING), {}, job("convert", "succeeded"), ("succeeded", "convert")),
        (node(reason=NC.CONVERTING), {}, job("convert", "failed"), ("failed", "convert")),
        (node(edge="false", reason=NC.REVERTING), {}, job("revert", "failed"), ("failed", "revert")),
        # a recorded failure is not tried again: not while its Job is kept, not after it is gone
        (node(reason=NC.CONVERT_FAILED), {}, job("convert", "failed"), ("none", None)),
        (node(reason=NC.CONVERT_FAILED), {}, None, ("none", None)),
        (node(reason=NC.CONVERT_FAILED, annotations={NC.RETRY: "1", NC.RETRY_SEEN: "1"}), {}, None, ("none", None)),
        # ... until an operator asks again, or the label asks for the other direction
        (
            node(reason=NC.CONVERT_FAILED, annotations={NC.RETRY: "2", NC.RETRY_SEEN: "1"}),
            {},
            job("convert", "failed", retry="1"),
            ("remove-job", "convert"),
        ),
        (
            node(reason=NC.CONVERT_FAILED, annotations={NC.RETRY: "2", NC.RETRY_SEEN: "1"}),
            {},
            None,
            ("start", "convert"),
        ),
        (node(edge="false", reason=NC.CONVERT_FAILED), {}, job("convert", "failed"), ("remove-job", "convert")),
        (node(reason=NC.REVERT_FAILED), {}, None, ("start", "convert")),
        # interrupted between the condition and the Job (or the Job deleted by hand): started again
        (node(reason=NC.CONVERTING), {}, None, ("start", "convert")),
        (node(edge="false", reason=NC.CONVERTING), {}, None, ("start", "revert")),
    ],
)
def test_the_decision_table(
    n: dict[str, Any], pools: dict[str, str], j: NC.JobState | None, expected: tuple[str, str | None]
) -> None:
    d = NC.decide(n, pools, j, timeout_s=300)
    assert (d.kind, d.action) == expected


def test_the_settings_round_trip_and_bad_ones_are_refused() -> None:
    assert NC.parse_settings(NC.settings_configmap(SETTINGS)) == SETTINGS
    assert NC.parse_settings(None) is None
    for bad in ("", "[]", json.dumps({"hubArgs": "x"}), json.dumps({"image": 3}), json.dumps({"image": ""})):
        with pytest.raises(NC.BadSettings):
            NC.parse_settings({"data": {NC.SETTINGS_KEY: bad}})


def test_the_job_is_the_one_convert_always_ran_and_only_settings_and_the_name_shape_it() -> None:
    mine = NC.job_for(SETTINGS, "convert", "n1", "anything")
    opts = plan.Options(cloud_nodes=(), image=SETTINGS.image, hub_args="--v=2", node_timeout_s=300)
    theirs = plan.node_job(
        "convert", "n1", opts.image, NC.node_args(opts.job_settings(), "convert"), tunnel=False, join_token=False
    )
    assert mine["spec"] == theirs["spec"]
    assert mine["metadata"]["annotations"] == {NC.JOB_RETRY: "anything"}


# The pass, on the in-memory Api.

JOBS = conversionsync.JOBS


def cluster(*nodes: dict[str, Any], settings: NC.JobSettings | None = SETTINGS) -> access.MemoryApi:
    api = access.MemoryApi()
    for n in nodes:
        api.create("/api/v1/nodes", n)
    if settings is not None:
        api.create(f"/api/v1/namespaces/{components.NAMESPACE}/configmaps", NC.settings_configmap(settings))
    return api


class Pass:
    def __init__(self, api: access.MemoryApi, max_parallel: int = 5) -> None:
        self.api = api
        self.leading = True
        self.counts: dict[str, int] = {}
        self.sync = conversionsync.ConversionSync(api, self.must_lead, self.count, max_parallel=max_parallel)

    def must_lead(self) -> None:
        if not self.leading:
            raise RuntimeError("wrote without the Lease")

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def __call__(self) -> None:
        nodes = {n["metadata"]["name"]: n for n in self.api.list("/api/v1/nodes")}
        self.sync.sync(nodes, self.api.list(nodepool.COLLECTION), self.api.list(JOBS))


def finish(api: access.MemoryApi, name: str, ok: bool) -> None:
    api.patch(f"{JOBS}/{name}", {"status": {"succeeded": 1} if ok else {"failed": 1}})


def cond(api: access.MemoryApi, name: str) -> tuple[str, str]:
    got = api.get(f"/api/v1/nodes/{name}")
    assert got is not None
    c = NC.condition(got) or {}
    return str(c.get("reason", "")), str(c.get("status", ""))


def events(api: access.MemoryApi, name: str) -> list[str]:
    return [e["reason"] for e in api.list(conversionsync.poolsync.EVENTS) if e["involvedObject"]["name"] == name]


def test_label_to_converted_and_unlabel_to_reverted_with_conditions_and_events() -> None:
    api = cluster(node("n1"))
    run = Pass(api)
    run()
    assert cond(api, "n1") == (NC.CONVERTING, "False")
    assert [j["metadata"]["name"] for j in api.list(JOBS)] == ["yurtctl-convert-n1"]
    run()  # nothing new while it runs
    assert len(api.list(JOBS)) == 1 and run.counts == {"started": 1}
    finish(api, "yurtctl-convert-n1", ok=True)
    run()
    assert cond(api, "n1") == (NC.CONVERTED, "True")
    assert api.list(JOBS) == []
    run()
    assert api.list(JOBS) == []  # a converted node stays converted
    api.patch("/api/v1/nodes/n1", {"metadata": {"labels": {names.EDGE_WORKER_LABEL: None}}})
    run()
    assert cond(api, "n1") == (NC.REVERTING, "False")
    assert [j["metadata"]["name"] for j in api.list(JOBS)] == ["yurtctl-revert-n1"]
    finish(api, "yurtctl-revert-n1", ok=True)
    run()
    assert cond(api, "n1") == (NC.REVERTED, "False") and api.list(JOBS) == []
    assert events(api, "n1") == [NC.CONVERTING, NC.CONVERTED, NC.REVERTING, NC.REVERTED]


def test_a_failed_node_keeps_its_condition_and_job_and_is_tried_again_only_when_asked() -> None:
    api = cluster(node("n1"))
    run = Pass(api)
    run()
    finish(api, "yurtctl-convert-n1", ok=False)
    run()
    got = api.get("/api/v1/nodes/n1")
    assert got is not None
    c = NC.condition(got) or {}
    assert c["reason"] == NC.CONVERT_FAILED and "no pod log to show" in c["message"] and NC.RETRY in c["message"]
    for _ in range(5):
        run()
    assert run.counts == {"started": 1, "failed": 1}  # never flaps
    assert [j["metadata"]["name"] for j in api.list(JOBS)] == ["yurtctl-convert-n1"]  # kept for diagnosis
    api.patch("/api/v1/nodes/n1", {"metadata": {"annotations": {NC.RETRY: "please"}}})
    run()  # the failed Job goes first
    assert api.list(JOBS) == [] and cond(api, "n1")[0] == NC.CONVERT_FAILED
    run()
    assert cond(api, "n1")[0] == NC.CONVERTING
    (new,) = api.list(JOBS)
    assert new["metadata"]["annotations"] == {NC.JOB_RETRY: "please"}
    finish(api, "yurtctl-convert-n1", ok=False)
    run()
    run()
    assert run.counts["started"] == 2 and cond(api, "n1")[0] == NC.CONVERT_FAILED  # asked once, tried once


def test_no_more_jobs_run_at_once_than_the_bound_and_the_others_wait_their_turn() -> None:
    api = cluster(*(node(f"n{i}") for i in range(6)))
    run = Pass(api, max_parallel=5)  # the settings say 2
    converted: set[str] = set()
    for _ in range(20):
        run()
        running = [j for j in api.list(JOBS) if not j.get("status")]
        assert len(running) <= 2
        if not running:
            break
        finish(api, running[0]["metadata"]["name"], ok=True)
        run()
        converted = {n["metadata"]["name"] for n in api.list("/api/v1/nodes") if NC.reason_of(n) == NC.CONVERTED}
    assert converted == {f"n{i}" for i in range(6)}


def test_a_job_running_longer_than_the_timeout_is_stopped_and_counted_failed() -> None:
    api = cluster(node("n1"), settings=NC.JobSettings(image="i", node_timeout_s=60))
    run = Pass(api)
    run()
    api.patch(f"{JOBS}/yurtctl-convert-n1", {"metadata": {"creationTimestamp": "2020-01-01T00:00:00Z"}})
    run()
    got = api.get("/api/v1/nodes/n1")
    assert got is not None
    assert NC.reason_of(got) == NC.CONVERT_FAILED and "timed out after 60s" in (NC.condition(got) or {})["message"]
    assert api.list(JOBS) == []  # its pod stopped
    run()
    assert api.list(JOBS) == []


def test_without_settings_or_the_lease_nothing_is_written() -> None:
    api = cluster(node("n1"), settings=None)
    Pass(api)()
    assert api.list(JOBS) == [] and cond(api, "n1") == ("", "")
    api = cluster(node("n1"))
    run = Pass(api)
    run.leading = False
    with pytest.raises(RuntimeError):
        run()
    assert api.list(JOBS) == [] and cond(api, "n1") == ("", "")


def test_attack_a_node_cannot_shape_its_job_and_a_node_that_is_not_edge_is_never_touched() -> None:
    """A node (kubelet, or whoever holds its credentials) writes its own labels, annotations and status.
    Whatever it writes, yurt-manager runs only the Job the settings say, with its own name, on itself; and
    a node that is not an edge node gets no Job, no condition, no annotation."""
    sneaky = node(
        "n1",
        annotations={
            NC.RETRY: "x; rm -rf /",
            NC.JOB_RETRY + "-image": "evil/image:1",
            "yurt-edge.io/image": "evil/image:1",
            "yurt-edge.io/hub-args": "--server-addr=https://evil",
        },
    )
    sneaky["metadata"]["labels"][components.JOB_LABEL] = "other-node"
    bystander = node("cloud-1", edge="false", pool="shop")
    outsider = node("plain", edge=None)
    api = cluster(sneaky, bystander, outsider)
    api.create(nodepool.COLLECTION, {"metadata": {"name": "shop"}, "spec": {"type": "Edge"}})
    before = {n: api.get(f"/api/v1/nodes/{n}") for n in ("cloud-1", "plain")}
    run = Pass(api)
    for _ in range(3):
        run()
    (j,) = api.list(JOBS)
    assert j["spec"] == NC.job_for(SETTINGS, "convert", "n1", "")["spec"]
    pod = j["spec"]["template"]["spec"]
    assert pod["nodeName"] == "n1" and pod["containers"][0]["image"] == SETTINGS.image
    assert pod["containers"][0]["command"] == [
        "/usr/local/bin/yurt-node-entry",
        "convert",
        "--node-name=n1",
        *NC.node_args(SETTINGS, "convert"),
    ]
    assert j["metadata"]["labels"][components.JOB_LABEL] == "n1"
    for name, was in before.items():
        assert api.get(f"/api/v1/nodes/{name}") == was, name
    assert events(api, "cloud-1") == events(api, "plain") == []


def test_a_lagging_informer_never_lets_more_than_the_bound_start() -> None:
    """The Jobs' and the nodes' informers both behind: the Jobs this replica created still count."""
    api = cluster(*(node(f"n{i}") for i in range(6)))
    sync = conversionsync.ConversionSync(api, lambda: None, lambda _: None, max_parallel=2)
    stale = {n["metadata"]["name"]: n for n in api.list("/api/v1/nodes")}
    for _ in range(3):
        sync.sync(stale, [], [])  # the copies from before the first pass, every time
    assert len(api.list(JOBS)) == 2
