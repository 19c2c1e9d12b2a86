# The two commands: `make demo` (runs `btml demo`) and `make test` (lint, types, the fast tests).
# `make test-all` also runs the tests marked slow (what CI runs). All create .venv and install
# everything on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build; a bare range would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Prism (Stoplight's OpenAPI mock, from npm) for the Alpaca contract test, into .venv/node
	npm install --no-audit --no-fund --silent --prefix $(VENV)/node @stoplight/prism-cli@5
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/btml demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The fast tier: every test not marked slow (one real TorchServe, real backtests, real SQLite).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow"

# Everything, the slow tier included (TorchServe end to end, heavy training, paper sessions).
test-all: $(STAMP) lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data_storage .pytest_cache .mypy_cache
