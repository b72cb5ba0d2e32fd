"""Benchmarks: `make bench` runs them all and writes one JSON file per area into bench/results/."""
