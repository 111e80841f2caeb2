# Two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel lies on disk; override for GPU machines, e.g. `make demo TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench lint clean

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

# The headline search on the embedded digits proxy; a second `make demo` resumes it.
demo: $(VENV)/.installed
	$(BIN)/ccsearch run --budget 325M $$([ -f runs/mnasnet_a1_325m/study.db ] && echo --resume)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check ccsearch tests benchmarks
	$(BIN)/python -m pytest -q tests

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_condconv.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check ccsearch tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
