# The two commands: `make demo` (runs `btml demo`) and `make test` (lint, types, the fast tests).
# `make test-all` also runs the tests marked slow (what CI runs). All create .venv and install
# everything on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint frontend frontend-check clean

# The dashboard's frontend (React + TypeScript, Vite): built into webapp/static, which ships in
# the Python package (so users need no Node). Rebuilt when its sources change.
FRONT_SRC := $(shell find frontend/src -type f) frontend/index.html frontend/package.json \
	frontend/package-lock.json frontend/vite.config.ts frontend/tsconfig.json
FRONT_STAMP := frontend/node_modules/.built

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build; a bare range would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	# Prism (Stoplight's OpenAPI mock, from npm) for the Alpaca contract test, into .venv/node
	npm install --no-audit --no-fund --silent --prefix $(VENV)/node @stoplight/prism-cli@5
	touch $(STAMP)

$(FRONT_STAMP): $(FRONT_SRC)
	npm ci --no-audit --no-fund --silent --prefix frontend
	npm run --silent --prefix frontend build
	touch $(FRONT_STAMP)

frontend: $(FRONT_STAMP)

# CI: the committed build (webapp/static) must be what the sources build to.
frontend-check: $(FRONT_STAMP)
	git diff --exit-code --stat -- webapp/static || \
	  (echo "webapp/static differs from a build of frontend/: run make frontend and commit it"; exit 1)
	test -z "$$(git status --porcelain -- webapp/static)" || \
	  (echo "webapp/static has files a build of frontend/ does not make: commit or remove them"; exit 1)

install: $(STAMP) $(FRONT_STAMP)

demo: $(STAMP) $(FRONT_STAMP)
	$(BIN)/btml demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast tier: every test not marked slow (one real TorchServe, real backtests, real SQLite).
test: $(STAMP) $(FRONT_STAMP) lint
	npm test --silent --prefix frontend
	$(BIN)/python -m pytest -q -m "not slow"

# Everything, the slow tier included (TorchServe end to end, heavy training, paper sessions).
test-all: $(STAMP) $(FRONT_STAMP) lint
	npm test --silent --prefix frontend
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data_storage .pytest_cache .mypy_cache frontend/node_modules
