"""Priority for the node's own components (`fairness`): the pure seats and classes by table, then the
serving bound through real HTTP (the harness of `test_yurthub_bounds`: yurthub's plain port and door in front of
a small aiohttp cloud on loopback, which holds requests to `.../stall` until its gate opens). The class limits'
and shares' wiring through HTTP is in test_yurthub_bounds."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from tests.unit.test_yurthub_bounds import (
    KUBELET,
    OTHER,
    STALL,
    Node,
    _status_lines,
    answers,
    gate,
    limits,
    node,
    until,
)
from yurthub import cli, config, fairness, server

__all__ = ["answers", "gate", "limits", "node"]  # fixtures used here

AGENTS = frozenset({"kubelet", "kube-proxy"})


@pytest.mark.parametrize(
    ("door", "component", "agents", "own", "trusted", "expected"),
    [
        (False, "kubelet", AGENTS, False, True, "node"),
        (False, "kube-proxy", AGENTS, False, True, "node"),
        (False, "kubelet", AGENTS, False, False, "other"),  # any local process can name itself kubelet
        (False, "kubelet", AGENTS, True, True, "other"),  # its own token: not the node's identity
        (False, "curl", AGENTS, False, True, "other"),
        (False, "", AGENTS, False, True, "other"),
        (False, "curl", frozenset({"*"}), False, True, "other"),  # `*` caches everyone, it trusts nobody more
        (True, "kubelet", AGENTS, True, True, "pod"),  # the door is always a pod's
        (True, "curl", AGENTS, False, True, "pod"),
    ],
)
def test_classes(door: bool, component: str, agents: frozenset[str], own: bool, trusted: bool, expected: str) -> None:
    asked: list[bool] = []

    def trusted_peer() -> bool:
        asked.append(trusted)
        return trusted

    got = fairness.classify(
        door=door, component=component, agents=agents, own_credentials=own, trusted_peer=trusted_peer
    )
    assert got == expected
    # the uid is looked up only for a request that would otherwise be the node's: the others pay nothing
    assert len(asked) == (not door and not own and component in agents and component != "*")


def test_seats_refuse_past_the_limit_and_a_release_counts_once() -> None:
    seats = fairness.Seats({"node": None, "pod": 2, "other": 1})
    first = seats.take("other")
    assert isinstance(first, fairness.Seat)
    assert seats.take("other") == "class"
    pods = [seats.take("pod"), seats.take("pod")]
    assert seats.take("pod") == "class"
    nodes = [seats.take("node") for _ in range(1000)]  # never limited, whatever the others hold
    assert all(isinstance(n, fairness.Seat) for n in nodes)
    first.release()
    first.release()  # twice: still one seat given back
    assert seats.inflight == {"node": 1000, "pod": 2, "other": 0}
    again = seats.take("other")
    assert isinstance(again, fairness.Seat)
    assert seats.take("other") == "class"
    for seat in (*pods, *nodes, again):
        assert isinstance(seat, fairness.Seat)
        seat.release()
    assert seats.inflight == {"node": 0, "pod": 0, "other": 0}


def test_an_uncounted_seat_changes_no_count() -> None:
    seats = fairness.Seats({"node": None, "pod": 1, "other": 1})
    fairness.uncounted("other").release()
    assert seats.inflight["other"] == 0


def test_each_client_holds_at_most_its_share_and_is_forgotten_once_it_holds_none() -> None:
    seats = fairness.Seats({"node": None, "pod": 10, "other": 10}, per_client=2)
    hostile = [seats.take("pod", ("address:a", "token:x")) for _ in range(2)]
    assert all(isinstance(s, fairness.Seat) for s in hostile)
    assert seats.take("pod", ("address:a", "token:y")) == "client"  # its address's share is spent
    assert seats.take("pod", ("address:b", "token:x")) == "client"  # its token's share is spent
    other = seats.take("pod", ("address:b", "token:y"))
    assert isinstance(other, fairness.Seat)  # another pod still gets in
    assert seats.inflight["pod"] == 3
    assert seats.busiest() == 2
    # requests without clients (the plain port) are counted by class only, never by share
    plain = [seats.take("node") for _ in range(100)]
    assert all(isinstance(s, fairness.Seat) for s in plain)
    for seat in (*hostile, other, *plain):
        assert isinstance(seat, fairness.Seat)
        seat.release()
        seat.release()  # twice: given back once
    assert seats.clients == {}
    assert seats.busiest() == 0
    assert seats.inflight == {"node": 0, "pod": 0, "other": 0}


def test_the_class_limit_is_checked_before_the_share() -> None:
    seats = fairness.Seats({"node": None, "pod": 1, "other": 1}, per_client=5)
    first = seats.take("pod", ("address:a",))
    assert isinstance(first, fairness.Seat)
    assert seats.take("pod", ("address:b",)) == "class"
    assert seats.clients == {"address:a": 1}  # a refused request leaves no count behind


def _seat(taken: fairness.Seat | str) -> fairness.Seat:
    assert isinstance(taken, fairness.Seat)
    return taken


def test_past_the_serving_bound_pods_and_others_wait_their_turn_in_order_and_node_never_waits() -> None:
    seats = fairness.Seats({"node": None, "pod": 10, "other": 10}, serving=2)
    served = [_seat(seats.take("pod")), _seat(seats.take("other"))]
    assert all(s.ready for s in served)
    woken: list[str] = []
    waiting = [_seat(seats.take(cls)) for cls in ("other", "pod", "pod")]
    for name, seat in zip(("first", "second", "third"), waiting, strict=True):
        assert not seat.ready
        seat.wake = lambda name=name: woken.append(name)
    assert (seats.served, len(seats.queue), seats.waiting("pod"), seats.waiting("other")) == (2, 3, 2, 1)
    nodes = [_seat(seats.take("node")) for _ in range(100)]
    assert all(n.ready for n in nodes)  # the node's own: served at once, whatever waits
    assert seats.served == 2  # and never counted against the bound
    for n in nodes:
        n.release()
    assert woken == []  # a node seat's release frees no pod's or other's turn
    waiting[1].release()  # the second gives up waiting: it leaves the queue, nobody's turn comes
    assert (woken, seats.served, len(seats.queue), seats.inflight["pod"]) == ([], 2, 2, 2)
    served[0].release()
    served[0].release()  # twice: one turn given
    assert woken == ["first"] and waiting[0].ready and not waiting[2].ready
    served[1].release()
    assert woken == ["first", "third"] and waiting[2].ready
    for seat in (waiting[0], waiting[2]):
        seat.release()
    assert (seats.served, len(seats.queue), seats.inflight) == (0, 0, {"node": 0, "pod": 0, "other": 0})


def test_a_waiting_seat_still_counts_against_its_class_limit_and_its_clients_share() -> None:
    """So the queue is bounded by the class limits: a flood past them is refused at once."""
    seats = fairness.Seats({"node": None, "pod": 3, "other": 1}, per_client=2, serving=1)
    first = _seat(seats.take("pod", ("address:a",)))
    second = _seat(seats.take("pod", ("address:a",)))
    assert first.ready and not second.ready
    assert seats.take("pod", ("address:a",)) == "client"  # its share counts the waiting one
    third = _seat(seats.take("pod", ("address:b",)))
    assert seats.take("pod", ("address:c",)) == "class"  # the class limit counts the waiting ones
    for seat in (third, second, first):
        seat.release()
    assert (seats.served, len(seats.queue), seats.clients) == (0, 0, {})


@pytest.mark.parametrize(
    ("verb", "subresource", "expected"),
    [
        ("get", "exec", True),
        ("create", "attach", True),
        ("get", "log", True),
        ("create", "portforward", True),
        ("get", "proxy", True),
        ("proxy", "", True),
        ("watch", "", True),
        ("get", "", False),
        ("list", "", False),
        ("patch", "status", False),
        ("create", "eviction", False),
    ],
)
def test_long_running_requests_are_kube_apiservers(verb: str, subresource: str, expected: bool) -> None:
    assert fairness.long_running(verb, subresource) is expected


def test_long_running_requests_count_against_their_class_but_never_wait_nor_hold_a_serving_seat() -> None:
    """Followed logs, exec and port-forwards can last hours: were they served in turn, a few would hold
    every seat and every pod's short request would wait until it gave up."""
    seats = fairness.Seats({"node": None, "pod": 4, "other": 4}, per_client=3, serving=1)
    held = _seat(seats.take("pod", ("address:a",)))  # the one serving seat, held
    streams = [_seat(seats.take("pod", ("address:a",), long_running=True)) for _ in range(2)]
    assert held.ready and all(s.ready and not s.serving for s in streams)  # served at once, beside it
    assert seats.served == 1 and seats.take("pod", ("address:a",)) == "client"  # they count in the share
    short = _seat(seats.take("pod", ("address:b",)))
    assert not short.ready and seats.take("pod", ("address:c",)) == "class"  # and in the class limit
    woken: list[bool] = []
    short.wake = lambda: woken.append(True)
    for stream in streams:
        stream.release()
    assert woken == [] and not short.ready  # a stream's end frees no serving seat: it held none
    held.release()
    assert woken == [True] and short.ready and short.serving
    short.release()
    assert (seats.served, len(seats.queue), seats.inflight, seats.clients) == (
        0,
        0,
        {"node": 0, "pod": 0, "other": 0},
        {},
    )


def test_without_a_serving_bound_nothing_waits() -> None:
    seats = fairness.Seats({"node": None, "pod": 100, "other": 100})
    assert all(_seat(seats.take("pod")).ready for _ in range(50))
    assert seats.queue == collections.deque()


# --- through real HTTP ------------------------------------------------------------------------------------

PATH = "/api/v1/namespaces/default/configmaps/a"


async def _door(node: Node) -> tuple[web.AppRunner, str]:
    """The door's routing (a pod's token required) without its TLS, on loopback."""
    runner = server._door_runner(node.hub)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


def _pod(token: str) -> dict[str, str]:
    return {"User-Agent": "kubelet/v1.34", "Authorization": f"Bearer {token}"}  # a pod may say it is kubelet


@pytest.mark.parametrize("limits", [config.LimitSettings(max_concurrent_non_node=2)])
async def test_with_the_non_node_seats_all_held_kubelet_is_served_and_a_pod_waits_its_turn(
    node: Node, gate: asyncio.Event
) -> None:
    """Two requests (a pod's on the door, another local client's) hold both seats pods and other clients
    share; a third pod's request waits, unread and not forwarded, while kubelet is answered again and again;
    when a held request ends, the waiting one is served."""
    runner, door_url = await _door(node)

    async def held(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        async with session.get(url + STALL, headers=headers) as resp:
            assert resp.status == 404  # once the cloud lets it go

    async def waiter(session: aiohttp.ClientSession) -> int:
        async with session.get(door_url + PATH, headers=_pod("third")) as resp:
            return resp.status

    try:
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
            group.create_task(held(session, door_url, _pod("first")), name="held-pod")
            group.create_task(held(session, node.url, OTHER), name="held-other")
            await until(lambda: node.hub.seats.served == 2 and len(node.seen) == 2)
            third = group.create_task(waiter(session), name="waiting-pod")
            await until(lambda: node.hub.seats.waiting("pod") == 1)
            for _ in range(10):  # kubelet: the cloud's answer every time, though every shared seat is held
                async with session.get(node.url + PATH, headers=KUBELET) as resp:
                    assert resp.status == 404
            assert len(node.seen) == 2 + 10  # the waiting pod's request has not reached the cloud
            assert not third.done()
            report = server.inflight_report(node.hub)  # what `yurthub status` shows
            assert (report["servingNonNode"], report["servingNonNodeCap"]) == (2, 2)
            assert report["waiting"] == {"pod": 1, "other": 0}
            text = generate_latest(node.hub.metrics.registry).decode()
            assert 'yurthub_waiting_requests{class="pod"} 1.0' in text
            assert "yurthub_serving_non_node_requests 2.0" in text
            gate.set()
            assert await third == 404  # its turn came: the cloud's answer
    finally:
        await runner.cleanup()
    assert (node.hub.seats.served, len(node.hub.seats.queue)) == (0, 0)
    assert node.hub.seats.inflight == {"node": 0, "pod": 0, "other": 0}


@pytest.mark.parametrize(
    "limits", [config.LimitSettings(max_concurrent_non_node=1, max_inflight_other=2, max_queue_wait_s=0.5)]
)
async def test_a_request_whose_turn_does_not_come_gets_429_and_a_flood_past_the_queue_429_at_once(
    node: Node, gate: asyncio.Event
) -> None:
    async def held() -> None:
        async with session.get(node.url + STALL, headers=OTHER) as resp:
            assert resp.status == 404

    async def waiter() -> tuple[int, dict[str, str], bytes]:
        async with session.post(node.url + PATH, data=b"{}", headers=OTHER) as resp:
            return resp.status, dict(resp.headers), await resp.read()

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        group.create_task(held(), name="held-other")
        await until(lambda: node.hub.seats.served == 1 and len(node.seen) == 1)
        waiting = group.create_task(waiter(), name="waiting-other")
        await until(lambda: node.hub.seats.waiting("other") == 1)
        # the class's limit counts the waiting request: a third is refused at once, never queued
        async with session.get(node.url + PATH, headers=OTHER) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            doc = json.loads(await resp.read())
            assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "TooManyRequests", 429)
        code, headers, body = await waiting  # its wait ends without its turn
        assert code == 429 and headers["Retry-After"] == "1"
        doc = json.loads(body)
        assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", "TooManyRequests", 429)
        assert "waited its turn" in doc["message"]
        assert len(node.seen) == 1  # neither refused request reached the cloud
        assert (node.hub.seats.inflight["other"], len(node.hub.seats.queue)) == (1, 0)
        gate.set()
    text = generate_latest(node.hub.metrics.registry).decode()
    assert 'yurthub_inflight_refused_total{class="other",reason="wait"} 1.0' in text
    assert 'yurthub_inflight_refused_total{class="other",reason="class"} 1.0' in text
    assert node.hub.seats.inflight == {"node": 0, "pod": 0, "other": 0}


@pytest.mark.parametrize("limits", [config.LimitSettings(max_concurrent_non_node=1)])
async def test_a_client_gone_while_waiting_is_skipped_when_its_turn_comes(node: Node, gate: asyncio.Event) -> None:
    """aiohttp does not cancel a handler whose client left: the request keeps its place in the queue, and
    when its turn comes it is dropped, never forwarded, and the turn passes on."""

    async def held() -> None:
        async with aiohttp.ClientSession() as session, session.get(node.url + STALL, headers=OTHER) as resp:
            assert resp.status == 404

    async def gone() -> None:
        async with aiohttp.ClientSession() as session:
            await session.get(node.url + PATH, headers=OTHER)  # no body whose read would fail

    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.TaskGroup() as group:
            group.create_task(held(), name="held-other")
            await until(lambda: node.hub.seats.served == 1 and len(node.seen) == 1)
            leaving = group.create_task(gone(), name="leaving-other")
            await until(lambda: node.hub.seats.waiting("other") == 1)
            leaving.cancel()  # the client closes its connection while its request waits
            gate.set()
    await until(lambda: node.hub.seats.inflight["other"] == 0)
    assert (node.hub.seats.served, len(node.hub.seats.queue), node.hub.seats.clients) == (0, 0, {})
    assert node.seen == [b""]  # only the held request reached the cloud, not the gone client's
    assert node.hub.requests_budget.held == 0
    async with aiohttp.ClientSession() as session, session.get(node.url + PATH, headers=OTHER) as resp:
        assert resp.status == 404


async def test_status_prints_the_serving_bound(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    printed = await _status_lines(node.hub, capsys)
    assert "pod and other requests served at once: 0/8, waiting their turn: pod 0, other 0 (up to 15s each)" in printed


def test_the_serving_bound_and_the_queue_wait_are_flags() -> None:
    base = ["--server-addr=https://127.0.0.1:6443", "--node-name=n"]
    limits = cli.settings_from_args(cli.parse_args(base)).limits
    assert (limits.max_concurrent_non_node, limits.max_queue_wait_s) == (8, 15.0)
    flags = ["--max-concurrent-non-node=3", "--max-queue-wait-seconds=2.5"]
    limits = cli.settings_from_args(cli.parse_args([*base, *flags])).limits
    assert (limits.max_concurrent_non_node, limits.max_queue_wait_s) == (3, 2.5)
    for flag in ("--max-concurrent-non-node=0", "--max-queue-wait-seconds=0"):
        with pytest.raises(config.ConfigError, match=flag.split("=")[0]):
            cli.settings_from_args(cli.parse_args([*base, flag]))
