# One entry point for people and CI. `make test` is what .ci/run runs.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PRODUCT := yurthub tunnel converter
PYTEST_ARGS ?=

.PHONY: setup check test unit unit-pythons dist e2e demo bench clean-cluster

setup:
	@hack/setup.sh

check: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Every check, then every test tier in one pytest run (one summary line), then the unit tier under each
# extra supported Python (hack/extra-pythons.sh: .venv-3.12, .venv-3.13). pytest's exit code 5 means it
# collected nothing: say so loudly rather than let it pass for an ordinary failure.
test: check
	@$(PY) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure" >&2; fi; \
	hack/extra-pythons.sh unit $(PYTEST_ARGS) || [ $$rc -ne 0 ] || rc=1; exit $$rc

unit-pythons: setup
	@hack/extra-pythons.sh unit $(PYTEST_ARGS)

# yurt-edge's wheel and its self-contained executable (hack/build-exe.sh: reproducible, cached outside the
# repository by the hash of the sources); prints the version and both sha256 sums, the directory last.
dist:
	@hack/build-exe.sh

unit: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

e2e: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests/e2e

demo: setup
	$(PY) -m testenv.demo

# The benchmarks measure us against the Go anchors (konnectivity, OpenYurt's yurthub): build them first
# (cached; a warm run returns at once). Only `make bench` builds them.
bench: setup
	@hack/build-anchors.sh
	$(PY) -m bench

# Kill and remove whatever an interrupted run left on this machine (processes, cgroups, links, mounts).
clean-cluster: setup
	$(PY) -c 'from testenv import cluster, leftovers; leftovers.clear(cluster.cache_dir()); print(leftovers.find(cluster.cache_dir()))'
