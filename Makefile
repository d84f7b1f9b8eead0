# The two commands: `make run` sets everything up and runs the service; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Every Python package `make run` and CI install, pinned with its hashes; `make lock` rewrites it.
LOCK   := requirements.lock
ASSETS := tre/web/static/nhsuk/nhsuk-frontend.min.css
export TRE_INSTANCE_PATH ?= $(CURDIR)/instance

WORKSPACE_RUNTIME ?= /opt/tre-workspace

.PHONY: lock setup run test test-e2e test-reliability lint static browser workspace-runtime acro softhsm clean

setup: $(STAMP) $(ASSETS)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# After changing pyproject.toml's dependencies: pin them again (the lock's own versions where they
# still fit; `make lock LOCK_ARGS=--upgrade` takes the newest), then `make setup`.
# tests/infra/test_runtime_dependencies.py fails while a declared dependency is missing from the lock.
lock:
	@test -x $(BIN)/uv || $(MAKE) $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --quiet \
	  --custom-compile-command "make lock" -o $(LOCK) $(LOCK_ARGS)

$(ASSETS): package.json package-lock.json infra/local/build_assets.py
	npm ci --no-audit --no-fund --loglevel=error
	$(BIN)/python infra/local/build_assets.py

# Debian's Chromium for the end-to-end tests (test tools may not download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium is missing: install Debian's chromium package (end-to-end tests will be skipped)"; fi; }

# The Python every workspace account can run (JupyterLab, pandas, statsmodels, the disclosure
# session, the JupyterLab extension built with npm), built from the system Python; and nftables for the
# workspaces' egress rules and bubblewrap for their file-system and PID sandbox. Root only.
workspace-runtime:
	@if [ "$$(id -u)" = 0 ]; then \
	  { command -v nft && command -v bwrap; } >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nftables acl python3-venv bubblewrap >/dev/null; }; \
	  infra/jupyterhub/build-workspace-runtime.sh $(WORKSPACE_RUNTIME); \
	else echo "not root: workspace runtime not built (workspaces cannot start; real-hub tests will be SKIPPED)"; fi

run: setup workspace-runtime
	$(BIN)/tre init
	$(BIN)/tre demo load
	$(BIN)/tre run

# SoftHSM2, the PKCS#11 token the HSM key-provider tests run against (tests/tre/core/). Root only.
softhsm:
	@command -v softhsm2-util >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq softhsm2 >/dev/null; \
	  else echo "softhsm2 is missing: install Debian's softhsm2 package (the HSM key-provider tests will be SKIPPED)"; fi; }

# ACRO, the reference the disclosure engine is tested against, needs an older pandas: own venv.
acro:
	bash benchmarks/acro_env.sh >/dev/null

test: setup static browser workspace-runtime acro softhsm
	$(BIN)/python -m pytest

# Static checks, run by `make test` before any test (docs/assurance/README.md): style and bugs (ruff),
# layer contracts (import-linter), types of the pure engines (mypy, files in pyproject), security
# smells (bandit, skips justified in pyproject) and our own rules (semgrep, offline, rules in the repo).
SEMGREP_ENV := SEMGREP_ENABLE_VERSION_CHECK=0 SEMGREP_SEND_METRICS=off
static: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/bandit -q -c pyproject.toml -r tre projects disclosure pseudonymisation jupyter
	$(SEMGREP_ENV) $(BIN)/semgrep scan --config infra/semgrep/rules.yml --metrics=off --disable-version-check \
	  --error -q tre projects disclosure pseudonymisation jupyter

test-e2e: setup browser workspace-runtime
	$(BIN)/python -m pytest -m e2e

# The tests that kill workers, crash the database or race requests, N times in a row (LOAD=1: with
# both cores kept busy), a line per run. TESTING.md says why they hold on any machine.
N ?= 5
LOAD ?= 0
test-reliability: setup
	LOAD=$(LOAD) bash tests/reliability/repeat.sh $(N)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) node_modules tre/web/static/nhsuk tre/web/static/swagger \
	  jupyter/labextension/node_modules jupyter/labextension/lib jupyter/labextension/build
