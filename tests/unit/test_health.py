"""Health fails fast and recovers only after consecutive successes; requests go to healthy servers only."""

from __future__ import annotations

from yurthub import config, health


def test_one_failure_marks_unhealthy_and_recovery_needs_consecutive_successes() -> None:
    state = health.ServerHealth("https://a", healthy_threshold=2)
    assert state.record(True) is False and state.healthy
    assert state.record(False) is True and not state.healthy
    assert state.record(True) is False and not state.healthy
    assert state.record(False) is False
    assert state.record(True) is False and not state.healthy
    assert state.record(True) is True and state.healthy


def test_the_first_probe_decides_directly() -> None:
    state = health.ServerHealth("https://a", healthy_threshold=3)
    assert state.record(False) is True and not state.healthy
    fresh = health.ServerHealth("https://b", healthy_threshold=3, healthy=False)
    assert fresh.record(True) is True and fresh.healthy


def settings(mode: config.LoadBalancingMode) -> config.CloudSettings:
    return config.CloudSettings(servers=("https://a", "https://b"), lb_mode=mode, heartbeat_healthy_threshold=1)


def test_round_robin_spreads_and_skips_unhealthy_servers() -> None:
    servers = health.Servers(settings(config.LoadBalancingMode.ROUND_ROBIN))
    assert {servers.pick() for _ in range(4)} == {"https://a", "https://b"}
    servers.record("https://a", False)
    assert {servers.pick() for _ in range(4)} == {"https://b"}


def test_priority_prefers_the_first_healthy_server() -> None:
    servers = health.Servers(settings(config.LoadBalancingMode.PRIORITY))
    assert servers.pick() == "https://a"
    servers.record("https://a", False)
    assert servers.pick() == "https://b"


def test_the_cloud_changes_state_only_when_all_or_one_server_flips() -> None:
    servers = health.Servers(settings(config.LoadBalancingMode.ROUND_ROBIN))
    assert servers.record("https://a", False) is False  # b still serves
    assert servers.record("https://b", False) is True  # cloud gone
    assert servers.pick() is None
    assert servers.record("https://b", True) is True  # back
