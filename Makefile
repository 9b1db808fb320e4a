# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Pinned so a fresh machine gets a known-good pair (override: make TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Test files run in this many processes (pytest-xdist; a file's tests stay together so its fixtures are built
# once; timings in benchmarks/results/make_test.txt). 0 = one process.
PYTEST_WORKERS ?= 2

.PHONY: demo test test-slow lint bench-quick clean help

help:
	@echo "make demo       create $(VENV), install prunekit, run the whole pipeline on the bundled data"
	@echo "make test       create $(VENV), install prunekit[dev,test], run the default test suite"
	@echo "make test-slow  the slow tests too"
	@echo "make lint       ruff and the import-layer contract (lint-imports)"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev,test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/prunekit run configs/demo.yaml --out runs/demo

test: $(BIN)/.installed
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache
