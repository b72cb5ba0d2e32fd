"""The README's benchmark tables are rendered from one run's JSON: figures, ratios and verdicts come from the
result as written, and only the text between an area's markers changes."""

from __future__ import annotations

from typing import Any

import pytest

from bench import tables


def fig(median: float, lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"median": median, "min": median if lo is None else lo, "max": median if hi is None else hi, "raw": []}


def answers(*, rv: bool, second: int) -> list[dict[str, Any]]:
    one = {
        "list_status": 200,
        "list_items_equal": True,
        "list_rv_equal": rv,
        "get_status": 200,
        "get_equal": True,
        "second_selector_status": second,
        "second_selector_items_equal": second == 200,
    }
    return [one, one, one]


RESULT: dict[str, Any] = {
    "commit": "abc1234",
    "machine": {"measured_at": "2026-11-29T13:40:00Z", "cores": 2},
    "load_average_1m": {"start": 1.5, "end": 3.0},
    "settings": {"repetitions": 3},
    "side_by_side": {
        "list_1k_pods_online_p50_ms": {
            "direct": fig(70),
            "direct_json": fig(100),
            "yurt_edge": fig(75, 70, 80),
            "openyurt": fig(150),
            "openyurt_filters_off": fig(85),
        },
        "get_added_latency_p50_ms": {"yurt_edge": fig(1.2), "openyurt": fig(1.0), "openyurt_filters_off": fig(1.5)},
        "get_added_latency_p99_ms": {
            "yurt_edge": {"value": 5.0, "samples": 600},
            "openyurt": {"value": 4.0, "samples": 600},
            "openyurt_filters_off": {"value": 4.5, "samples": 600},
        },
        "cache_disk_mb_1k_pods": {"yurt_edge": fig(2.2), "openyurt": fig(4.0)},
        "offline_answers": {
            "yurt_edge": answers(rv=True, second=200),
            "openyurt": answers(rv=False, second=400),
            "openyurt_filters_off": answers(rv=False, second=400),
        },
    },
}


def test_the_yurthub_table_shows_each_system_the_ratio_and_whether_the_target_is_met() -> None:
    table = tables.yurthub_table(RESULT)
    assert "commit abc1234 on 2026-11-29" in table
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["LIST 1k pods online p50 (ms)"] == (
        "| LIST 1k pods online p50 (ms) | 70.0; JSON 100.0 | 75.0 (70.0-80.0) | 150.0; off: 85.0 | 0.50 (0.88) | "
        "keep the lead | yes |"
    )
    assert rows["GET added over direct p50 (ms)"].endswith("| 1.20 (0.80) | <= 0.8x and <= 1 ms | **no** |")
    assert rows["cache on disk, 1k pods only (MB)"].endswith("| 0.55 | <= 1.0x | yes |")
    assert "600 samples each" in table
    equal = rows["offline answers equal to the cloud's bytes"]
    assert "list items yes, list resourceVersion yes, GET yes | list items yes, list resourceVersion no" in equal
    assert "| answered 400; off: answered 400 |" in rows["offline LIST with a second label selector"]


def test_only_the_text_between_the_markers_is_replaced() -> None:
    readme = "before\n<!-- bench:yurthub:start -->\nold table\n<!-- bench:yurthub:end -->\nafter\n"
    out = tables.replace_between(readme, "yurthub", "new table\n")
    assert out == "before\n<!-- bench:yurthub:start -->\nnew table\n<!-- bench:yurthub:end -->\nafter\n"
    with pytest.raises(ValueError, match="no bench:tunnel markers"):
        tables.replace_between(readme, "tunnel", "x\n")


TUNNEL: dict[str, Any] = {
    "commit": "def5678",
    "machine": {"measured_at": "2026-11-29T17:00:00Z", "cores": 2},
    "load_average_1m": {"start": 1.0, "end": 2.0},
    "repetitions": 3,
    "figures": {
        "echo_added_p50_ms": {
            "yurt-edge": fig(0.25, 0.2, 0.3),
            "konnectivity": fig(0.3),
            "ratio": 0.833,
            "target_ratio": "<= 1.0",
            "target_met": True,
            "direct_echo_p50_ms": fig(0.006),
        },
        "one_stream_mb_s": {
            "yurt-edge": fig(200),
            "konnectivity": fig(150),
            "direct": fig(2000),
            "ratio": 1.333,
            "target_ratio": ">= 1.5",
            "target_met": False,
        },
        "idle_agent_kb_2000": {
            "yurt-edge": fig(49),
            "konnectivity": {"skipped": "does not fit"},
            "target": "<= 50 KB (ours)",
            "target_met": True,
        },
        "a_new_figure": {"yurt-edge": fig(1), "konnectivity": fig(2), "ratio": 0.5},
    },
    "details": {"yurt-edge": {"reconnect_storm_s_2000": fig(12.5, 11, 14)}},
    "bytes_before_200": {"yurt-edge": 0, "konnectivity": 4},
}


def test_the_tunnel_table_is_one_runs_figures_in_the_readmes_order_and_drops_none() -> None:
    table = tables.tunnel_table(TUNNEL)
    assert "commit def5678 on 2026-11-29" in table and "load average 1.0 at the start, 2.0 at the end" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| tunnel")]
    assert rows == [
        "| one stream, 256 MiB (MB/s) | 200.0 | 150.0 | 1.33 | ≥ 1.5 | **no** |",
        "| 1-byte echo, added latency p50 (ms) | 0.250 (0.200-0.300) | 0.300 | 0.83 | ≤ 1.0 | yes |",
        "| server memory per idle agent, 2,000 agents (KB) | 49.0 | not measured | — | ≤ 50 KB (ours) | yes |",
        "| a_new_figure | 1.00 | 2.00 | 0.50 | — | — |",
    ]
    assert "one stream (MB/s) 2,000, echo p50 (ms) 0.006." in table
    assert "killed and restarted: 12.5 (11.0-14.0) s" in table
    assert "yurt-edge 0, konnectivity 4 CONNECTs" in table


def test_both_areas_are_rewritten_between_their_own_markers() -> None:
    readme = "a\n<!-- bench:tunnel:start -->\nold\n<!-- bench:tunnel:end -->\nb\n"
    out = tables.replace_between(readme, "tunnel", tables.tunnel_table(TUNNEL))
    assert out.startswith("a\n<!-- bench:tunnel:start -->\nOne `python -m bench tunnel` run of commit def5678")
    assert out.endswith("CONNECTs.\n<!-- bench:tunnel:end -->\nb\n") and "old" not in out


KUBELET_SOAK = {
    "kubelet_get_p50_ms_quiet": 7.6,
    "kubelet_get_p99_ms_quiet": 15.8,
    "kubelet_get_p50_ms_during_soak": 9.6,
    "kubelet_get_p99_ms_during_soak": 53.8,
    "kubelet_get_samples_quiet": 1200,
    "kubelet_get_samples_during_soak": 2100,
    "kubelet_get_p99_during_soak_over_quiet_ratio": 3.405,
}
"""The kubelet-shaped client's soak figures of one layout, as `bench.yurthub_soak` reports them."""


def test_the_soak_rows_show_the_machines_share_and_yurthubs_beside_the_kubelet_figure() -> None:
    soak = {
        **KUBELET_SOAK,
        "kubelet_direct_get_p50_ms_quiet": 4.6,
        "kubelet_direct_get_p99_ms_quiet": 11.1,
        "kubelet_direct_get_p50_ms_during_soak": 3.6,
        "kubelet_direct_get_p99_ms_during_soak": 14.8,
        "yurthub_added_p50_ms_quiet": 3.0,
        "yurthub_added_p99_ms_quiet": 4.7,
        "yurthub_added_p50_ms_during_soak": 6.0,
        "yurthub_added_p99_ms_during_soak": 33.0,
    }
    rows = tables.own_rows(soak)
    assert rows[0].endswith("| 7.60 / 15.8 ms vs 9.60 / 53.8 ms (p99 ratio 3.40) | p99 within 2x |")
    assert rows[1] == (
        "| ... the same GETs straight at kube-apiserver, quiet vs during the soak | 4.60 / 11.1 ms vs 3.60 / 14.8 ms "
        "| (the machine's share) |"
    )
    assert rows[2].endswith("| 3.00 / 4.7 ms vs 6.00 / 33.0 ms | |")
    assert tables.own_rows({k: v for k, v in soak.items() if not k.startswith("yurthub_added")})[2:] == []


def test_the_soak_with_yurthub_on_a_cpu_of_its_own_has_rows_of_its_own_after_the_shared_ones() -> None:
    shared = {**KUBELET_SOAK, "yurthub_loop_runqueue_share_during_soak": 0.226}
    reserved = {"reserved_cpu_" + k: v / 2 for k, v in shared.items() if "samples" not in k}
    reserved |= {"reserved_cpu_kubelet_get_samples_quiet": 900, "reserved_cpu_kubelet_get_samples_during_soak": 1700}
    rows = tables.own_rows(shared | reserved)
    assert len(rows) == 4
    assert rows[0].startswith("| ... kubelet-shaped GET p50 / p99, quiet vs during the soak (1,200 / 2,100 samples)")
    assert rows[1] == "| ... share of the soak yurthub's event loop waited for a CPU | 0.23 | |"
    assert rows[2].startswith("| ... again, yurthub and the kubelet-shaped client on a CPU of their own")
    assert rows[2].endswith(
        "(900 / 1,700 samples) | 3.80 / 7.9 ms vs 4.80 / 26.9 ms (p99 ratio 1.70) | p99 within 2x |"
    )
    assert rows[3] == "| ... share of the soak yurthub's event loop waited for a CPU | 0.11 | |"
    assert tables.own_rows(shared) == rows[:2]


def test_a_table_from_make_bench_says_so_with_the_runs_start_and_the_areas_own_time() -> None:
    stamped = {**TUNNEL, "run": {"command": "make bench", "areas": ["tunnel"], "started": "2026-11-29T16:10:00Z"}}
    table = tables.tunnel_table(stamped)
    assert table.startswith(
        "From the `make bench` run of commit def5678 started 2026-11-29T16:10:00Z, every area one after the "
        "other, this one measured from 17:00 UTC (2 cores;"
    )
    alone = {**TUNNEL, "run": {"command": "python -m bench tunnel", "areas": ["tunnel"], "started": "x"}}
    assert tables.tunnel_table(alone).startswith("One `python -m bench tunnel` run of commit def5678 on 2026-11-29")
