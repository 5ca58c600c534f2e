# The two commands the README promises: `make demo` and `make test` (each sets itself up first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CASES ?= 500

.PHONY: setup demo test lint services browser promtool bench clean

$(BIN)/hubbridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/hubbridge

setup: $(BIN)/hubbridge

demo: setup
	$(BIN)/hubbridge demo --cases $(CASES)

lint: setup
	$(BIN)/ruff check .

# the console's browser tests need Debian's chromium + chromium-driver: installed here if missing
browser:
	bash .ci/browser

# the shipped Prometheus alert rules are checked with promtool (from Debian's prometheus package)
promtool:
	bash .ci/promtool

test: setup lint browser promtool
	$(BIN)/python -m pytest -q -p no:cacheprovider

services:
	bash .ci/services

BENCH ?= --quick
# `make bench BENCH=` runs the issues' full sizes (hours on two cores); the default is a quick pass
bench: setup services
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) var *.egg-info
