# Parley. The two commands: `make run` serves, `make test` checks everything (CI runs it).
# Each creates .venv on first use and installs what it needs, no more: `make run` only the
# server's runtime dependencies, `make test` the dev extra (linters, generators, test vectors).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
# One stamp per installed extra; each is redone when pyproject.toml changes.
RUNTIME := $(VENV)/.runtime
TOOLS   := $(VENV)/.tools
DEV     := $(VENV)/.dev
PIP     := $(BIN)/python -m pip install --quiet

.DEFAULT_GOAL := help
.PHONY: help install tools run run-cluster demo test lint typecheck pytest protos docs bench instructions format clean

help:
	@echo "make run      start the server on localhost:50051 (ARGS='--test-number +15550001111=123456')"
	@echo "make run-cluster  two replicas on one PostgreSQL, ports 50051-50052 (PARLEY_DATABASE or a throwaway one)"
	@echo "make demo     a scripted conversation with the parley CLI on a temporary server"
	@echo "make tools    add grpcurl to .venv/bin (for the README's grpcurl session)"
	@echo "make test     lint, types, proto lint, stub drift and the whole test suite"
	@echo "make install  everything make test needs (the dev extra)"
	@echo "make protos   regenerate the Python stubs, descriptor set and API reference from protos/"
	@echo "make docs     regenerate docs/api-reference.md from the .proto comments"
	@echo "make bench    the benchmarks, ceilings measured in the same run (about 5 min;"
	@echo "              ARGS=--quick: every section scaled down, under 2 min); bench/results.{json,png}"
	@echo "make instructions  instructions per delivered message, plain and template, under"
	@echo "              valgrind's cachegrind (about 1 min): changes too small for make bench's timing"
	@echo "make format   apply ruff's formatting"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(TOOLS): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[tools]'
	touch $@ $(RUNTIME)

# The dev extra includes the runtime dependencies and the tools extra.
$(DEV): pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev]'
	touch $@ $(RUNTIME) $(TOOLS)

install: $(DEV)

tools: $(TOOLS)

run: $(RUNTIME)
	$(BIN)/parley-server $(ARGS)

# Two replicas on one PostgreSQL (PARLEY_DATABASE, or a throwaway local one): server/cluster.py.
run-cluster: $(RUNTIME)
	$(BIN)/python -m server.cluster $(ARGS)

demo: $(RUNTIME)
	$(BIN)/python -m client.demo

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint protos

typecheck: $(DEV)
	$(BIN)/mypy

pytest: $(DEV)
	$(BIN)/pytest

test: lint typecheck pytest

protos: $(DEV)
	$(BIN)/python protos/generate.py
	$(BIN)/python protos/apidoc.py

docs: $(DEV)
	$(BIN)/python protos/apidoc.py

bench: $(DEV)
	$(BIN)/python -m bench $(ARGS)

instructions: $(DEV)
	$(BIN)/python -m bench.instructions

format: $(DEV)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache tests/interop/peer/node_modules
