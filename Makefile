# The README's two commands: `make run` and `make test`.
VENV    := .venv
STATE   ?= /run/core0-dev
PORT    ?= 6379
PYTEST_ARGS ?=

.PHONY: deps run test lint docs bench image clean

deps:
	bash scripts/install-deps.sh

## install everything, then run core0 in the foreground (supervisor + embedded redis + dispatcher)
run: deps
	$(VENV)/bin/core0 dev --state-dir $(STATE) --redis-port $(PORT)

## install everything, then run the whole test suite (what CI runs)
test: deps
	$(VENV)/bin/ruff check core0 client tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/core0 docs --check
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check core0 client tests bench
	$(VENV)/bin/mypy

docs:
	$(VENV)/bin/core0 docs

bench: deps
	$(VENV)/bin/python bench/ping.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
