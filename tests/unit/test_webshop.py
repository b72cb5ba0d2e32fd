"""The arithmetic of what the Service test's client saw: its log lines, failed seconds, gaps."""

from __future__ import annotations

from testenv.webshop import Round, between, failed_seconds, failures, largest_gap, parse_rounds


def test_rounds_are_read_from_kubelets_log_lines_and_lines_cut_short_are_left_out() -> None:
    lines = [
        "2026-11-29T09:40:00.1Z stdout F fetch 1000 name=ok ip=ok",
        "2026-11-29T09:40:02.1Z stdout F fetch 1002 name=fail ip=ok",
        "2026-11-29T09:40:04.1Z stdout P fetch 1004 name=o",
        "2026-11-29T09:40:04.2Z stderr F wget: bad address 'web.shop.svc.cluster.local'",
        "fetch 999 name=ok ip=fail",
    ]
    assert parse_rounds(lines) == [Round(999, True, False), Round(1000, True, True), Round(1002, False, True)]


def test_a_failed_round_counts_until_the_next_round_starts_and_the_last_one_until_the_end() -> None:
    rounds = [Round(10, True, True), Round(12, False, True), Round(17, True, True), Round(19, True, False)]
    assert failed_seconds(rounds, 10, 25) == (17 - 12) + (25 - 19)
    assert failed_seconds(rounds, 13, 25) == 25 - 19, "rounds before the window do not count"
    assert failed_seconds([Round(10, True, True), Round(11, True, True)], 10, 20) == 0
    assert failures(rounds) == [Round(12, False, True), Round(19, True, False)]
    assert between(rounds, 12, 19) == [Round(12, False, True), Round(17, True, True)]


def test_the_largest_gap_covers_the_window_edges_so_a_stalled_client_shows() -> None:
    rounds = [Round(12, True, True), Round(14, True, True)]
    assert largest_gap(rounds, 10, 30) == 16
    assert largest_gap([], 10, 30) == 20
