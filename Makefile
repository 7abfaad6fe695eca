# pipeq — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PYTHONPATH := $(CURDIR)
VENV = $(shell scripts/venv.sh)
PY = $(VENV)/bin/python

.PHONY: help deps browser-deps venv run test unit integration clean soak
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install redis-server and the pipeline's tools (Debian packages), and plotly for fastp.html
	@scripts/deps.sh
	@scripts/plotly.sh >/dev/null || echo "pipeq: no local plotly (scripts/plotly.sh failed): fastp.html will load it from the internet" >&2

browser-deps: ## install Debian's chromium for the browser tests
	@scripts/browser-deps.sh

venv: ## create the cached virtualenv
	@scripts/venv.sh >/dev/null

run: deps venv ## run pipeq on this machine: embedded Redis, the API and autoscaled local workers
	$(PY) -m pipeq dev

# pytest-xdist workers for make test: one takes the kind tests, one the control plane's, the
# others the rest (tests/support/parallel.py); measured on 2 cores in docs/tests.md
TEST_WORKERS ?= 3

test: deps venv tools browser-deps ## run the whole test suite (installs and starts what it needs)
	$(PY) -m pytest -q -m "not soak" -n $(TEST_WORKERS) --dist loadgroup --durations=15 tests

unit: venv ## unit tests only (seconds)
	$(PY) -m pytest -q tests/unit

clean: ## remove local state (not the caches)
	rm -rf .cluster data .pipeq .pytest_cache

-include mk/*.mk

soak: deps venv ## the 2-minute load soak against pipeq dev (PIPEQ_SOAK_SECONDS to change)
	$(PY) -m pytest -q -s -m soak tests/reliability/test_soak.py
