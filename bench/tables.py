"""README tables from bench/results/*.json: `python -m bench.tables` rewrites the README's yurthub and tunnel tables
(each between its `bench:<area>` markers) from bench/results/<area>.json, stamped with the run's commit and
date, so the README shows one run's figures and nothing else. `python -m bench.tables --print tunnel` prints a
table instead.

Pure functions from a result (the JSON, as loaded) to Markdown; the only I/O is in `main`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"

OURS, OY, OY_OFF = "yurt_edge", "openyurt", "openyurt_filters_off"
TUNNEL_OURS = "yurt-edge"  # bench/tunnel_bench.py names the systems as their projects do
JSON_DIRECT = "direct_json"
"""The cloud's JSON answer to the same request (yurt-edge reads kubelet's pods as JSON)."""

# figure, label, decimals, target (the issue's, as ours/OpenYurt with its filters unless said), lower is better
_YURTHUB_ROWS: list[tuple[str, str, int, str, float | None]] = [
    ("list_1k_pods_online_p50_ms", "LIST 1k pods online p50 (ms)", 1, "keep the lead", 1.0),
    ("get_added_latency_p50_ms", "GET added over direct p50 (ms)", 2, "<= 0.8x and <= 1 ms", 0.8),
    ("watch_event_added_latency_p50_ms", "watch event added over direct p50 (ms)", 2, "", None),
    ("list_1k_pods_offline_p50_ms", "LIST 1k pods offline p50 (ms)", 1, "keep the lead", 1.0),
    ("time_to_notice_frozen_cloud_s", "frozen cloud to the first answer from the cache (s)", 1, "keep the lead", 1.0),
    ("rss_mb_idle_10k_objects", "RSS after caching 10k ConfigMaps (MB)", 1, "keep the lead", 1.0),
    ("cache_disk_mb_10k_configmaps", "cache on disk, 10k ConfigMaps + 1k pods (MB)", 1, "keep the lead", 1.0),
    ("cache_disk_mb_1k_pods", "cache on disk, 1k pods only (MB)", 1, "<= 1.0x", 1.0),
]


def cell(value: dict[str, Any] | None, decimals: int) -> str:
    if not value:
        return ""
    if "median" not in value:
        return f"{value['value']:.{decimals}f}"
    med, lo, hi = (f"{value[k]:,.{decimals}f}" for k in ("median", "min", "max"))
    return med if lo == hi else f"{med} ({lo}-{hi})"


def _ratio(systems: dict[str, Any], other: str) -> float | None:
    ours, theirs = systems.get(OURS), systems.get(other)
    if not ours or not theirs or not theirs.get("median"):
        return None
    return float(ours["median"]) / float(theirs["median"])


def _answers(runs: list[dict[str, Any]]) -> str:
    """How a hub's offline answers compared with the cloud's, over every repetition."""
    if not runs:
        return "not measured"

    def every(key: str) -> str:
        hits = sum(bool(r[key]) for r in runs)
        return "yes" if hits == len(runs) else ("no" if hits == 0 else f"{hits}/{len(runs)}")

    return (
        f"list items {every('list_items_equal')}, list resourceVersion {every('list_rv_equal')}, "
        f"GET {every('get_equal')}"
    )


def _second_selector(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "not measured"
    if all(r["second_selector_items_equal"] for r in runs):
        return "the cloud's items"
    statuses = sorted({str(r["second_selector_status"]) for r in runs})
    return "answered " + ", ".join(statuses) + (" (items differ)" if statuses == ["200"] else "")


def which_run(result: dict[str, Any], area: str) -> str:
    """The sentence that opens a table: the run its figures come from (`bench.__main__.run_stamp`), its
    commit and the date this area was measured; a result without a run stamp is one area's own run."""
    run = result.get("run") or {}
    measured = result["machine"]["measured_at"]
    command = run.get("command") or f"python -m bench {area}"
    if command == "make bench":
        return (
            f"From the `make bench` run of commit {result.get('commit', '?')} started {run['started']}, every area "
            f"one after the other, this one measured from {measured[11:16]} UTC"
        )
    return f"One `{command}` run of commit {result.get('commit', '?')} on {measured[:10]}"


def yurthub_table(result: dict[str, Any]) -> str:
    figures: dict[str, Any] = result["side_by_side"]
    settings = result.get("settings", {})
    lines = [
        f"{which_run(result, 'yurthub')} ({result['machine']['cores']} cores, shared with other work; "
        f"load average {result.get('load_average_1m', {}).get('start', '?')} at the start, "
        f"{result.get('load_average_1m', {}).get('end', '?')} at the end). Each figure is the median of "
        f"{settings.get('repetitions', '?')} repetitions interleaved between the systems (min-max in brackets); "
        "the ratio is yurt-edge / OpenYurt (to OpenYurt with its filters off in brackets, where measured both ways).",
        "",
        "| yurthub figure | direct | yurt-edge | OpenYurt v1.7.0; off: its filters off | ratio (filters off) "
        "| target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label, decimals, target, bound in _YURTHUB_ROWS:
        systems = figures.get(key)
        if not systems:
            continue
        oy, off = cell(systems.get(OY), decimals), cell(systems.get(OY_OFF), decimals)
        ratio, ratio_off = _ratio(systems, OY), _ratio(systems, OY_OFF)
        ratio_text = "" if ratio is None else f"{ratio:.2f}" + ("" if ratio_off is None else f" ({ratio_off:.2f})")
        met = ""
        if bound is not None and ratio is not None:
            ok = ratio <= bound
            if key == "get_added_latency_p50_ms":
                ok = ok and systems[OURS]["median"] <= 1.0
            met = "yes" if ok else "**no**"
        lines.append(
            f"| {label} | {cell(systems.get('direct'), decimals)}"
            f"{f'; JSON {cell(systems[JSON_DIRECT], decimals)}' if JSON_DIRECT in systems else ''} | "
            f"{cell(systems.get(OURS), decimals)} | "
            f"{oy}{f'; off: {off}' if off else ''} | {ratio_text} | {target} | {met} |"
        )
    p99 = figures.get("get_added_latency_p99_ms", {})
    if p99:
        lines.append(
            f"| GET added over direct p99 (ms; {p99[OURS]['samples']:,} samples each, pooled) | | "
            f"{p99[OURS]['value']:.2f} | {p99[OY]['value']:.2f}; off: {p99[OY_OFF]['value']:.2f} | | | |"
        )
    files = figures.get("cache_files_10k_configmaps", {})
    files_1k = figures.get("cache_files_1k_pods", {})
    if files and files_1k:
        lines.append(
            f"| cache files, 10k ConfigMaps / 1k pods only | | {files[OURS]['median']:,.0f} / "
            f"{files_1k[OURS]['median']:,.0f} | {files[OY]['median']:,.0f} / {files_1k[OY]['median']:,.0f} | | | |"
        )
    answers = figures.get("offline_answers", {})
    if answers:
        lines.append(
            f"| offline answers equal to the cloud's bytes | | {_answers(answers.get(OURS, []))} | "
            f"{_answers(answers.get(OY, []))}; off: {_answers(answers.get(OY_OFF, []))} | | yes | "
            f"{'yes' if _answers(answers.get(OURS, [])).count('yes') == 3 else '**no**'} |"
        )
        lines.append(
            f"| offline LIST with a second label selector | | {_second_selector(answers.get(OURS, []))} | "
            f"{_second_selector(answers.get(OY, []))}; off: {_second_selector(answers.get(OY_OFF, []))} | | | |"
        )
    events = figures.get("cache_events_per_s", {}).get(OURS)
    if events:
        pb = figures.get("cache_events_per_s_protobuf", {}).get(OURS)
        lines.append(
            "| cache events persisted per second, one per transaction from the cloud's frames, JSON"
            f"{' / protobuf' if pb else ''} | | {cell(events, 0)}{f' / {cell(pb, 0)}' if pb else ''} | "
            "not comparable (no in-process path) | | ≥ 5,000 | "
            f"{'yes' if events['median'] >= 5000 else '**no**'} |"
        )
    own = own_rows(result.get("metrics", {}))
    if own:
        lines += [
            "",
            "yurthub's own figures in the same run:",
            "",
            "| yurthub figure | measured | target |",
            "|---|---|---|",
        ]
        lines += own
    return "\n".join(lines) + "\n"


def own_rows(m: dict[str, Any]) -> list[str]:
    """The figures that compare yurthub with itself (node restarts, the hostile soak), where the run has them."""
    rows = []

    def has(*keys: str) -> bool:
        return all(k in m for k in keys)

    if has("online_node_restart_to_pods_running_s", "offline_node_restart_to_pods_running_s"):
        rows.append(
            f"| node power-on to 10 pods running, online / offline | {m['online_node_restart_to_pods_running_s']} / "
            f"{m['offline_node_restart_to_pods_running_s']} s (ratio {m['offline_over_online_restart_ratio']:.2f}) | "
            "offline/online <= 1.0 |"
        )
    if has("rss_mb_before_hostile_soak", "rss_mb_after_hostile_soak", "rss_mb_peak_first_soak_phase"):
        rows.append(
            f"| hostile soak, 3 x 10,000 requests: RSS before / after (peak of first / last phase) | "
            f"{m['rss_mb_before_hostile_soak']} / {m['rss_mb_after_hostile_soak']} MB "
            f"({m['rss_mb_peak_first_soak_phase']} / {m['rss_mb_peak_last_soak_phase']}) | levels off |"
        )
    if has("cache_mb_before_hostile_soak", "cache_mb_after_hostile_soak", "cache_mb_growth_first_soak_phase"):
        rows.append(
            f"| ... cache on disk before / after (growth in first / last phase) | "
            f"{m['cache_mb_before_hostile_soak']} / {m['cache_mb_after_hostile_soak']} MB "
            f"({m['cache_mb_growth_first_soak_phase']} / {m['cache_mb_growth_last_soak_phase']} MB) | levels off |"
        )
    if has("metric_series_before_hostile_soak", "metric_series_after_hostile_soak"):
        rows.append(
            f"| ... `/metrics` samples before / after | {m['metric_series_before_hostile_soak']} / "
            f"{m['metric_series_after_hostile_soak']} | flat under random paths, verbs, User-Agents |"
        )
    rows += _kubelet_rows(m, "", "...")
    rows += _kubelet_rows(
        m,
        "reserved_cpu_",
        "... again, yurthub and the kubelet-shaped client on a CPU of their own, everything else on the other:",
    )
    return rows


def _kubelet_rows(m: dict[str, Any], prefix: str, lead: str) -> list[str]:
    """The soak's kubelet rows of one CPU layout (its figures' keys start with `prefix`)."""
    rows = []

    def has(*keys: str) -> bool:
        return all(prefix + k in m for k in keys)

    def f(key: str) -> Any:
        return m[prefix + key]

    if has("kubelet_get_p50_ms_quiet", "kubelet_get_p99_ms_during_soak", "kubelet_get_samples_quiet"):
        rows.append(
            f"| {lead} kubelet-shaped GET p50 / p99, quiet vs during the soak ({f('kubelet_get_samples_quiet'):,} / "
            f"{f('kubelet_get_samples_during_soak'):,} samples) | {f('kubelet_get_p50_ms_quiet'):.2f} / "
            f"{f('kubelet_get_p99_ms_quiet'):.1f} ms vs {f('kubelet_get_p50_ms_during_soak'):.2f} / "
            f"{f('kubelet_get_p99_ms_during_soak'):.1f} ms (p99 ratio "
            f"{f('kubelet_get_p99_during_soak_over_quiet_ratio'):.2f}) | p99 within 2x |"
        )
    if has("kubelet_direct_get_p50_ms_quiet", "kubelet_direct_get_p99_ms_during_soak"):
        rows.append(
            f"| ... the same GETs straight at kube-apiserver, quiet vs during the soak | "
            f"{f('kubelet_direct_get_p50_ms_quiet'):.2f} / {f('kubelet_direct_get_p99_ms_quiet'):.1f} ms vs "
            f"{f('kubelet_direct_get_p50_ms_during_soak'):.2f} / {f('kubelet_direct_get_p99_ms_during_soak'):.1f} ms "
            "| (the machine's share) |"
        )
    if has("yurthub_added_p50_ms_quiet", "yurthub_added_p99_ms_during_soak"):
        rows.append(
            f"| ... added by yurthub (through minus direct) p50 / p99, quiet vs during the soak | "
            f"{f('yurthub_added_p50_ms_quiet'):.2f} / {f('yurthub_added_p99_ms_quiet'):.1f} ms vs "
            f"{f('yurthub_added_p50_ms_during_soak'):.2f} / {f('yurthub_added_p99_ms_during_soak'):.1f} ms | |"
        )
    if has("yurthub_loop_runqueue_share_during_soak"):
        rows.append(
            f"| ... share of the soak yurthub's event loop waited for a CPU | "
            f"{f('yurthub_loop_runqueue_share_during_soak'):.2f} | |"
        )
    return rows


# (figure key, label, decimals): the README's rows in order; a figure the JSON has and this list does not is
# shown after them under its key, so a new figure is never dropped silently.
_TUNNEL_ROWS = (
    ("one_stream_mb_s", "one stream, 256 MiB (MB/s)", 1),
    ("echo_added_p50_ms", "1-byte echo, added latency p50 (ms)", 3),
    ("echo_p99_ms", "1-byte echo, round trip p99 (ms{samples})", 2),
    ("fifty_streams_mb_s", "50 streams aggregate (MB/s)", 1),
    ("fifty_streams_one_stalled_mb_s", "50 streams with one reader stalled (MB/s)", 1),
    ("fairness", "fairness: stalled / free", 3),
    ("idle_agent_kb_200", "server memory per idle agent, 200 agents (KB)", 1),
    ("idle_agent_kb_largest_both", "server memory per idle agent, {agents} agents (KB)", 1),
    ("idle_agent_kb_2000", "server memory per idle agent, 2,000 agents (KB)", 1),
)


def _tunnel_cell(value: Any, decimals: int) -> str:
    if isinstance(value, dict) and "skipped" in value:
        return "not measured"
    return cell(value, decimals) if isinstance(value, dict) else ""


def tunnel_table(result: dict[str, Any]) -> str:
    """The tunnel figures side by side (bench/tunnel_bench.py's `figures`: per system median/min/max, ratio,
    target_ratio or target, target_met), stamped with the run's commit, date and load."""
    load = result.get("load_average_1m", {})
    lines = [
        f"{which_run(result, 'tunnel')} ({result['machine']['cores']} cores; load average "
        f"{load.get('start', '?')} at the start, {load.get('end', '?')} at the end). Each figure is the median of "
        f"{result.get('repetitions', '?')} repetitions interleaved between the two (min-max in brackets); the "
        "ratio is yurt-edge / konnectivity.",
        "",
        "| tunnel figure | yurt-edge | konnectivity | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    figures: dict[str, Any] = result["figures"]
    known = [key for key, _, _ in _TUNNEL_ROWS]
    rows = [row for row in _TUNNEL_ROWS if row[0] in figures]
    rows += [(key, key, 2) for key in figures if key not in known]
    for key, template, decimals in rows:
        fig = figures[key]
        label = template.format(
            samples=f"; {fig['samples_per_run']:,} samples a run" if "samples_per_run" in fig else "",
            agents=f"{fig.get('agents_both_ran', '?'):,}" if "agents_both_ran" in fig else "?",
        )
        ratio = fig.get("ratio")
        met = fig.get("target_met")
        target = fig.get("target_ratio") or fig.get("target") or "—"
        lines.append(
            f"| {label} | {_tunnel_cell(fig.get(TUNNEL_OURS), decimals)} | "
            f"{_tunnel_cell(fig.get('konnectivity'), decimals)}"
            f" | {'—' if ratio is None else f'{ratio:.2f}'} | {target.replace('>=', '≥').replace('<=', '≤')} | "
            f"{'—' if met is None else ('yes' if met else '**no**')} |"
        )
    direct = [
        f"{text} {cell(fig, decimals)}"
        for fig, text, decimals in (
            (figures.get("one_stream_mb_s", {}).get("direct"), "one stream (MB/s)", 0),
            (figures.get("echo_added_p50_ms", {}).get("direct_echo_p50_ms"), "echo p50 (ms)", 3),
            (figures.get("echo_p99_ms", {}).get("direct"), "echo p99 (ms)", 3),
        )
        if fig
    ]
    if direct:
        lines += ["", "Direct loopback TCP in the same run: " + ", ".join(direct) + "."]
    storm = result.get("details", {}).get(TUNNEL_OURS, {}).get("reconnect_storm_s_2000")
    if storm:
        lines += [
            "",
            f"Our server back to all 2,000 agents after being killed and restarted: {cell(storm, 1)} s "
            "(target ≤ 30 s).",
        ]
    before_200 = result.get("bytes_before_200")
    if before_200:
        lines += [
            "",
            "A target's first bytes delivered before the tunnel's `200 Connection established` in this run: "
            f"yurt-edge {before_200.get(TUNNEL_OURS, '?')}, "
            f"konnectivity {before_200.get('konnectivity', '?')} CONNECTs.",
        ]
    return "\n".join(lines) + "\n"


def replace_between(text: str, area: str, table: str) -> str:
    """`text` with what lies between the `bench:<area>` markers replaced by `table`."""
    pattern = re.compile(rf"(<!-- bench:{area}:start -->\n).*?(<!-- bench:{area}:end -->)", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no bench:{area} markers")
    return pattern.sub(lambda m: m.group(1) + table + m.group(2), text, count=1)


RENDERERS = {"yurthub": yurthub_table, "tunnel": tunnel_table}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--print"]:
        for area in argv[1:] or list(RENDERERS):
            print(RENDERERS[area](json.loads((RESULTS / f"{area}.json").read_text())))
        return 0
    text = README.read_text()
    for area in argv or list(RENDERERS):
        text = replace_between(text, area, RENDERERS[area](json.loads((RESULTS / f"{area}.json").read_text())))
    README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
