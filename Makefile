# vaultsvc — the two commands a new user runs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime
DIST   ?= dist
PROTOS := $(wildcard protos/interakt/vault/v1/*.proto)

.PHONY: faults run test install system-deps cluster-deps cluster-test node-deps bench-console bench-cold-fetch proto proto-baseline clients dist lint typecheck bench bench-search faults-audit bench-visibility clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24"

# What the vault needs to run, and vaultctl (the dev vault's banner uses it): the contract
# (interakt-vault-api) first, since the server and the client pin it. No dev toolchain, and
# pip's progress stays visible: this is the first thing a new user waits for.
$(RUNTIME): $(VENV)/bin/python pyproject.toml clients/python/pyproject.toml api/python/pyproject.toml
	$(PIP) install -e ./api/python -e ./clients/python -e .
	@touch $(RUNTIME)

# The dev toolchain (mypy, ruff, hypothesis, playwright, ...) on top: only for tests and lints.
$(STAMP): $(RUNTIME)
	$(PIP) install --quiet -e ./api/python -e ./clients/python -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

## Start a throwaway development vault on 127.0.0.1:50051 (embedded Postgres, generated key and tokens).
run: $(RUNTIME)
	$(PY) -m vaultsvc dev

## Run the whole test suite.
test: $(STAMP) node-deps system-deps
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pytest -q

## Debian's chromium for the console's browser tests (Playwright drives it; no browser
## download ever), and the cluster test's servers (cluster-deps). CI runs as root;
## elsewhere install them once with sudo.
system-deps: cluster-deps
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends chromium)

## Debian 12's PostgreSQL 15, pgbouncer and haproxy for the cluster test (tests/cluster/).
cluster-deps:
	@test -x /usr/lib/postgresql/15/bin/postgres && test -x /usr/sbin/pgbouncer && test -x /usr/sbin/haproxy || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 pgbouncer haproxy)

## The whole cluster test: PostgreSQL 15 + pgbouncer (transaction mode) + 3 replicas +
## haproxy; consistency, a Postgres restart, a replica killed under load (~1 min).
## `make test` runs its first part only (docs/pgbouncer.md).
cluster-test: $(STAMP) cluster-deps
	$(PY) -m pytest -q -p no:cacheprovider -m 'cluster or not cluster' tests/cluster

## Node dependencies: the Node client's, and the pinned buf CLI that lints protos/ (tools/buf).
## The suite needs both: without npm this step fails instead of letting tests skip.
node-deps:
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js (>= 18) with npm" >&2; exit 1; }
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error

## Regenerate the Python stubs of interakt-vault-api (api/python/src) from protos/
## (committed; a test fails when they drift).
proto: $(STAMP)
	$(PY) tools/protogen.py

## Record protos/ as the baseline of `buf breaking` (tests/unit/test_buf.py): only when a
## contract version is released, never to silence a breaking-change finding.
proto-baseline: node-deps
	tools/buf/node_modules/.bin/buf build --exclude-source-info -o protos/buf-baseline.binpb

## Regenerate every generated client.
clients: proto
	$(PY) clients/python/tools/unasync.py
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix clients/node --no-audit --no-fund; fi

## Wheels of the contract, the server and the client plus every dependency, into dist/
## (deploy/wheelhouse.sh, which the Dockerfile's build stage runs too): then
## `pip install --no-index --find-links dist vaultsvc` installs the server alone, offline.
dist: $(VENV)/bin/python
	PYTHON=$(PY) sh deploy/wheelhouse.sh $(DIST)

## Fault experiments under load (a few minutes, root: SIGSTOP/kill -9 Postgres, read-only,
## a tmpfs tablespace that fills up, kill -9 the vault): prints experiment → what clients
## saw → what was lost (nothing acknowledged may be); exit 1 if anything was.
faults: $(STAMP)
	$(PY) -m tests.faults.run

lint: $(STAMP)
	$(VENV)/bin/ruff check vaultsvc tests tools clients/python/src/vaultsvc_client
	$(VENV)/bin/ruff format --check vaultsvc tests tools clients/python/src/vaultsvc_client

typecheck: $(STAMP)
	$(VENV)/bin/mypy vaultsvc clients/python/src/vaultsvc_client

## ResolveTemplate vs an echo ResolverService (same workers), warm and cold, concurrency
## 1/16/64, server CPU per call, commit latency, 1k vs 1M secrets, RSS (~5-10 min;
## `$(PY) -m tests.bench.bench_echo --quick` for a smoke run under a minute).
bench: $(STAMP)
	$(PY) -m tests.bench.bench_echo

## A resolve's cache miss alone, in-process (cache, fetch batcher, pool, SELECT), warm vs
## cold at 1k and 100k secrets: vault and Postgres CPU per call.
bench-cold-fetch: $(STAMP)
	$(PY) -m tests.bench.bench_cold_fetch

## ListSecrets search and paging over a million secrets, indexed vs index scans disabled.
bench-search: $(STAMP)
	$(PY) -m tests.bench.bench_search

## Audit durability under kill -9 of the vault and of Postgres (a few minutes): prints
## experiment -> what clients saw -> what was lost (must be nothing); non-zero if anything was.
faults-audit: $(STAMP)
	$(PY) -m tests.faults.audit_durability --seconds 10 --rounds 3

## Commit on one replica -> new value resolved on two others (3 serve processes, p50/p99/max).
bench-visibility: $(STAMP)
	$(PY) -m tests.bench.bench_visibility

## A page of 1000 secrets through the console's JSON API at 1M secrets.
bench-console: $(STAMP)
	$(PY) -m tests.bench.bench_console

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
