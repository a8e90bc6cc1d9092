# Thin wrappers. `make serve` and `make test` are the whole quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BENCH := ../shared/bench
BENCH_PYTHON ?= /tmp/benchvenv/bin/python

.PHONY: serve test check bench bench-quick clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tidings needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(VENV)/.installed $@

serve: $(VENV)/.installed
	$(BIN)/tidings serve $(ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(ARGS)

check: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

$(BENCH_PYTHON):
	bash $(BENCH)/setup.sh

bench: $(VENV)/.installed-dev | $(BENCH_PYTHON)
	$(BENCH_PYTHON) $(BENCH)/run.py --extra-targets benchmarks/targets.json --out benchmarks/results $(ARGS)

bench-quick: $(VENV)/.installed-dev | $(BENCH_PYTHON)
	$(BIN)/python benchmarks/quick.py --python $(BENCH_PYTHON)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info
