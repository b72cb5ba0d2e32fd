"""`make bench`: run every benchmark and write bench/results/<area>.json with the machine it ran on.

An area may have several runners: their dicts are merged into one results file, in order (a key both
give as a dict, such as `metrics` and `median`, gets the keys of both; any other key the later runner's).

Every result names the run it came from (`run`: the command, the areas it ran in order, when it started),
so the README's tables can say which figures were measured in one run (`bench.tables`)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench import converter, exe_bench, machine, service_bench, testenv_start, tunnel_bench, yurthub_bench

RESULTS = Path(__file__).with_name("results")
Runner = Callable[[], Mapping[str, object]]
BENCHMARKS: dict[str, tuple[Runner, ...]] = {
    "testenv": (testenv_start.run,),
    "yurthub": (yurthub_bench.run, service_bench.run),
    "tunnel": (tunnel_bench.run,),
    "converter": (converter.run,),
    "packaging": (exe_bench.run,),
}


def merge(results: list[Mapping[str, object]]) -> dict[str, object]:
    """One area's results from its runners' dicts (see the module doc)."""
    merged: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def run_stamp(argv: list[str], chosen: list[str], now: float | None = None) -> dict[str, object]:
    """Which run a result belongs to: `make bench` (every area, no arguments) or `python -m bench AREA...`."""
    return {
        "command": "make bench" if not argv else "python -m bench " + " ".join(argv),
        "areas": list(chosen),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now)),
    }


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; known: {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    run = run_stamp(argv, chosen)
    for name in chosen:
        stamp = {"machine": machine.describe(), "commit": machine.commit(), "run": run}
        result = {**stamp, **merge([runner() for runner in BENCHMARKS[name]])}
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: {json.dumps(result.get('median', result))} -> bench/results/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
