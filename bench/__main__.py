"""`make bench`: run every benchmark and write bench/results/<area>.json with the machine it ran on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import converter, exe_bench, machine, testenv_start, tunnel_bench, yurthub_bench

RESULTS = Path(__file__).with_name("results")
BENCHMARKS = {
    "testenv": testenv_start.run,
    "yurthub": yurthub_bench.run,
    "tunnel": tunnel_bench.run,
    "converter": converter.run,
    "packaging": exe_bench.run,
}


def main(argv: list[str]) -> int:
    chosen = argv or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; known: {sorted(BENCHMARKS)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in chosen:
        result = {"machine": machine.describe(), **BENCHMARKS[name]()}
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"{name}: {json.dumps(result.get('median', result))} -> bench/results/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
