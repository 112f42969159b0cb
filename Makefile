# Two set-up commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= data/demo
DEMO_MODEL ?= models/demo

.PHONY: help install lint format test test-fast demo demo-model clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev tools

lint: $(STAMP)  ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint  ## lint, then the whole test suite (slow end-to-end tests included)
	$(VENV)/bin/pytest

test-fast: $(STAMP)  ## the test suite without the slow end-to-end tests
	$(VENV)/bin/pytest -m "not slow"

$(DEMO_DIR)/metrics:
	$(VENV)/bin/workbench generate --servers 12 --days 4 --seed 7 --out $(DEMO_DIR) --overwrite

demo: $(STAMP) $(DEMO_DIR)/metrics  ## simulate a small fleet and print the committed demo model's forecast
	test -f $(DEMO_MODEL)/model.safetensors || $(MAKE) demo-model
	$(VENV)/bin/workbench forecast --bundle $(DEMO_MODEL) --data $(DEMO_DIR) --head 24

demo-model: $(STAMP) $(DEMO_DIR)/metrics  ## retrain the demo model (a few minutes on 2 cores)
	$(VENV)/bin/workbench train --data $(DEMO_DIR) --out $(DEMO_MODEL) --preset demo

clean:  ## remove the virtual environment and generated data (keeps the committed demo model)
	rm -rf $(VENV) $(DEMO_DIR)
