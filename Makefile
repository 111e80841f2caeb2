# Two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel lies on disk; override for GPU machines, e.g. `make demo TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0

# apt-get needs root; elsewhere sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench lint clean postgres-binaries chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/pip install -q "$(TORCH_SPEC)")

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

# The headline search on the embedded smoke proxy (generated glyphs, not ImageNet); a second
# `make demo` resumes it.
demo: $(VENV)/.installed
	$(BIN)/ccsearch run --budget 325M $$([ -f runs/mnasnet_a1_325m/study.db ] && echo --resume)

test: $(VENV)/.installed-dev postgres-binaries chromium
	$(BIN)/ruff check ccsearch tests benchmarks
	$(BIN)/python -m pytest -q tests

# The storage tests start a throwaway PostgreSQL server of their own: they need its binaries.
postgres-binaries:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
	  echo "installing the PostgreSQL server (apt-get) for the storage tests"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

# The dashboard tests load every shipped dashboard in Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing Chromium (apt-get) for the dashboard tests"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_condconv.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check ccsearch tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
