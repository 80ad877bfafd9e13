# Parley. The two commands: `make run` serves, `make test` checks everything (CI runs it).
# Both create .venv and install the project with its dev tools on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install run test lint typecheck pytest protos docs bench format clean

help:
	@echo "make run      start the server on localhost:50051 (ARGS='--test-number +15550001111=123456')"
	@echo "make test     lint, types, proto lint, stub drift and the whole test suite"
	@echo "make protos   regenerate the Python stubs, descriptor set and API reference from protos/"
	@echo "make docs     regenerate docs/api-reference.md from the .proto comments"
	@echo "make bench    run the benchmarks"
	@echo "make format   apply ruff's formatting"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/parley-server $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint protos

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

protos: $(STAMP)
	$(BIN)/python protos/generate.py
	$(BIN)/python protos/apidoc.py

docs: $(STAMP)
	$(BIN)/python protos/apidoc.py

bench: $(STAMP)
	$(BIN)/python -m bench

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache tests/interop/peer/node_modules
