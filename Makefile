# CareLedger: `make run` starts a demo node, `make test` runs the whole suite.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= .careledger
HOST ?= 127.0.0.1
PORT ?= 8000

ASSETS := src/careledger/web/static/vendor/VERSIONS

.PHONY: run test lint typecheck unit setup system bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Browser assets from npm (pinned in the script), copied into the package at build time.
$(ASSETS): scripts/vendor-assets.sh
	sh scripts/vendor-assets.sh

# Debian packages (chromium for the portal tests); installs them when run as root.
system:
	sh scripts/install-system-deps.sh

setup: $(STAMP) $(ASSETS)

run: $(STAMP) $(ASSETS)
	@test -f $(DATA)/node.json || $(BIN)/careledger init --demo $(DATA)
	$(BIN)/careledger serve $(DATA) --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(ASSETS) system
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test: lint typecheck unit

# Every bench, one after another, into one table: docs/bench.md (BENCH_ARGS=--quick for smoke sizes).
bench: $(STAMP)
	$(BIN)/python bench/all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/careledger/web/static/vendor
