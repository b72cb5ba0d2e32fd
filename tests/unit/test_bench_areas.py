"""An area of `make bench` with several runners writes one results file: their dicts merged."""

from __future__ import annotations

from bench import service_bench, yurthub_bench
from bench.__main__ import BENCHMARKS, merge, run_stamp


def test_the_yurthub_area_runs_the_hub_bench_then_the_service_bench() -> None:
    assert BENCHMARKS["yurthub"] == (yurthub_bench.run, service_bench.run)


def test_dicts_under_the_same_key_merge_and_other_keys_take_the_later_value() -> None:
    hub = {"metrics": {"a": 1, "b": 2}, "median": {"a": 1}, "hostile_soak": {"x": 1}, "note": "hub"}
    svc = {"metrics": {"b": 3, "c": 4}, "median": {"c": 4}, "service_reboots": {"raw": [1]}, "note": "svc"}
    assert merge([hub, svc]) == {
        "metrics": {"a": 1, "b": 3, "c": 4},
        "median": {"a": 1, "c": 4},
        "hostile_soak": {"x": 1},
        "service_reboots": {"raw": [1]},
        "note": "svc",
    }
    assert hub["metrics"] == {"a": 1, "b": 2}  # the runners' own dicts are left as they were


def test_every_result_names_its_run_make_bench_without_arguments() -> None:
    assert run_stamp([], list(BENCHMARKS), now=0) == {
        "command": "make bench",
        "areas": ["testenv", "yurthub", "tunnel", "converter", "packaging"],
        "started": "1970-01-01T00:00:00Z",
    }
    assert run_stamp(["tunnel"], ["tunnel"], now=0)["command"] == "python -m bench tunnel"
