# vaultsvc — the two commands a new user runs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
GEN    := clients/python/src
PROTOS := $(wildcard protos/interakt/vault/v1/*.proto)

.PHONY: run test install node-deps proto clients lint typecheck bench-resolve bench-search clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"

$(STAMP): $(VENV)/bin/python pyproject.toml clients/python/pyproject.toml
	$(PIP) install --quiet -e ./clients/python -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## Start a throwaway development vault on 127.0.0.1:50051 (embedded Postgres, generated key and tokens).
run: $(STAMP)
	$(PY) -m vaultsvc dev

## Run the whole test suite.
test: $(STAMP) node-deps
	$(PY) -m pytest -q

## The Node client's dependencies (skipped, and its test skips loudly, where node is absent).
node-deps:
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix clients/node --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Node client test will be skipped"; fi

## Regenerate the Python stubs from protos/ (committed; a test fails when they drift).
proto: $(STAMP)
	$(PY) -m vaultsvc._protogen $(GEN)

## Regenerate every generated client.
clients: proto
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix clients/node --no-audit --no-fund; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check vaultsvc tests clients/python/src/vaultsvc_client
	$(VENV)/bin/ruff format --check vaultsvc tests clients/python/src/vaultsvc_client

typecheck: $(STAMP)
	$(VENV)/bin/mypy vaultsvc clients/python/src/vaultsvc_client

bench-resolve: $(STAMP)
	$(PY) -m tests.bench.bench_resolve

## ListSecrets search and paging over a million secrets, indexed vs index scans disabled.
bench-search: $(STAMP)
	$(PY) -m tests.bench.bench_search

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
