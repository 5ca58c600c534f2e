# The two commands the README promises: `make demo` and `make test` (each sets itself up first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CASES ?= 500

.PHONY: setup demo test lint services fault-tests bench clean

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

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

services:
	bash .ci/services

bench: setup
	$(BIN)/python -m bench.mapping
	$(BIN)/python -m bench.sla

clean:
	rm -rf $(VENV) var *.egg-info
