# Two set-up commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= data/demo
DEMO_MODEL ?= models/demo
REF_DATA ?= data/reference-mix
REF_UNIFORM ?= models/reference-uniform
REF_MODEL ?= models/reference
REF_CRITICAL ?= data/reference-critical
REAL_SOURCE ?= $(or $(WORKBENCH_REAL_DATA),../shared/data/real)/bitbrains-rnd
REAL_DATA ?= data/bitbrains
REAL_MODEL ?= models/real
REAL_TARGETS := cpu_pct,mem_pct,disk_io_mb_s,net_in_mb_s,net_out_mb_s

.PHONY: help install browser prometheus lint format test test-fast lab demo demo-forecast demo-model model model-uniform calibrate report warning-benchmark size-study real-data real-model real-report clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev tools

# The dashboard's end-to-end test drives Debian's chromium (Playwright never downloads a browser).
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
browser:  ## install Debian's chromium for the dashboard's browser test (when missing)
	command -v chromium >/dev/null || ($(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium)

# The Prometheus tests check /metrics and examples/prometheus/ with Debian's promtool and amtool and
# push to a real Alertmanager.
prometheus:  ## install Debian's promtool, amtool and Alertmanager for the Prometheus tests (when missing)
	command -v promtool >/dev/null && command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null && command -v prometheus-node-exporter >/dev/null || \
		($(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y \
		--no-install-recommends prometheus prometheus-alertmanager prometheus-node-exporter)

lint: $(STAMP)  ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint browser prometheus  ## lint, then the whole test suite (slow end-to-end tests included)
	$(VENV)/bin/pytest

test-fast: $(STAMP)  ## the test suite without the slow end-to-end tests
	$(VENV)/bin/pytest -m "not slow"

# The file browser shows notebooks/, but kernels start in the repo root, as `workbench report` (papermill) runs
# them, so the parameters' relative paths (data/demo, models/reference, ...) resolve the same. No browser
# is opened without a display: open the URL with the token that Lab prints. As root (a container), Lab
# refuses to start without --allow-root (SUDO is empty for root).
LAB_PORT ?= 8888
lab: $(STAMP)  ## open JupyterLab on the notebooks (http://127.0.0.1:8888/lab; Ctrl-C stops it)
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks --MappingKernelManager.root_dir='$(CURDIR)' \
		$(if $(DISPLAY),,--no-browser) $(if $(SUDO),,--allow-root)

$(DEMO_DIR)/metrics:
	$(VENV)/bin/workbench generate --servers 12 --days 4 --seed 7 --out $(DEMO_DIR) --overwrite

demo: $(STAMP)  ## the live demo: daemon, stream and dashboard (http://127.0.0.1:8866/); Ctrl-C stops all
	test -f $(DEMO_MODEL)/model.safetensors || $(MAKE) demo-model
	$(VENV)/bin/workbench demo --bundle $(DEMO_MODEL)

demo-forecast: $(STAMP) $(DEMO_DIR)/metrics  ## simulate a small fleet and print the demo model's forecast table
	test -f $(DEMO_MODEL)/model.safetensors || $(MAKE) demo-model
	$(VENV)/bin/workbench forecast --bundle $(DEMO_MODEL) --data $(DEMO_DIR) --head 24

demo-model: $(STAMP) $(DEMO_DIR)/metrics  ## retrain the demo model until early stopping (<= 5 min on 2 cores), then fit its incident probabilities and drift reference
	$(VENV)/bin/workbench train --data $(DEMO_DIR) --out $(DEMO_MODEL) --preset demo
	$(VENV)/bin/workbench calibrate-incidents --bundle $(DEMO_MODEL)
	$(VENV)/bin/workbench drift-reference --bundle $(DEMO_MODEL) --data $(DEMO_DIR)

# The evaluated model: 48 servers x 21 days of a scenario mix (the degrading scenario: a seeded
# 15 % of servers at 4x the incident rate, the rest healthy); the last 3 days and a fifth of the
# servers are held out. Training windows that hold an incident weigh 5x (sampling=incidents).
$(REF_DATA)/metrics:
	$(VENV)/bin/workbench generate --servers 48 --days 21 --seed 11 --scenario degrading --out $(REF_DATA) --overwrite

REF_TRAIN := $(VENV)/bin/workbench train --data $(REF_DATA) --preset reference --holdout-days 3 --holdout-servers 0.2

model: $(STAMP) $(REF_DATA)/metrics  ## train the reference model (incident-weighted windows) until early stopping (30-min bound), then calibrate it
	$(REF_TRAIN) --set sampling=incidents --out $(REF_MODEL)
	$(MAKE) calibrate
	$(VENV)/bin/workbench drift-reference --bundle $(REF_MODEL) --data $(REF_DATA)

model-uniform: $(STAMP) $(REF_DATA)/metrics  ## the same model with uniform windows: the early-warning report's "without" (about 25 min)
	$(REF_TRAIN) --set sampling=uniform --out $(REF_UNIFORM)
	$(VENV)/bin/workbench calibrate-incidents --bundle $(REF_UNIFORM)

calibrate: $(STAMP)  ## fit the reference model's incident probabilities and alert threshold on seeded validation fleets
	$(VENV)/bin/workbench calibrate-incidents --bundle $(REF_MODEL)

$(REF_MODEL)/model.safetensors: | $(STAMP) $(REF_DATA)/metrics
	$(MAKE) model

# Early warning needs incidents to count: a separately simulated, never-seen fleet under the critical scenario.
$(REF_CRITICAL)/metrics:
	$(VENV)/bin/workbench generate --servers 30 --days 4 --seed 12 --scenario critical --out $(REF_CRITICAL) --overwrite

report: $(STAMP) $(REF_DATA)/metrics $(REF_CRITICAL)/metrics $(REF_MODEL)/model.safetensors  ## evaluate the reference model into reports/
	$(VENV)/bin/workbench report 03_evaluate -p bundle $(REF_MODEL) -p data $(REF_DATA)
	$(VENV)/bin/workbench report 03_evaluate -p bundle $(REF_MODEL) -p data $(REF_CRITICAL) -p split fleet -p test_days 2
	$(VENV)/bin/workbench report 04_warmup_study -p bundle $(REF_MODEL) -p data $(REF_DATA)
	$(MAKE) warning-benchmark

warning-benchmark: $(STAMP) $(REF_MODEL)/model.safetensors  ## the early-warning benchmark: unseen seeded critical and healthy fleets, every rule (vs models/reference-uniform when built)
	$(VENV)/bin/workbench report 06_early_warning -p bundle $(REF_MODEL) -p progress False \
		$(if $(wildcard $(REF_UNIFORM)/model.safetensors),-p compare_bundle $(REF_UNIFORM))

size-study: $(STAMP) $(REF_DATA)/metrics  ## train (8 min each) and score six network sizes into reports/ (about an hour on 2 cores)
	$(VENV)/bin/workbench report 05_model_size -p data $(REF_DATA) -p max_minutes 8 -p progress False

# Real data: both Bitbrains months (250 VMs, July-August 2013, 5 metrics; a 24-hour hole between the months
# splits each VM's history, as any gap over 30 min does). A fifth of the VMs and the last 7 days are held out.
real-data: $(STAMP)  ## import both Bitbrains months into data/bitbrains (from ../shared/data/real, or WORKBENCH_REAL_DATA)
	$(VENV)/bin/workbench import $(REAL_SOURCE)/2013-7 $(REAL_SOURCE)/2013-8 --format bitbrains --out $(REAL_DATA) --overwrite

$(REAL_DATA)/metrics:
	$(MAKE) real-data

real-model: $(STAMP) $(REAL_DATA)/metrics  ## train models/real on Bitbrains (real preset: window-scaled loss, 5 metrics) until early stopping (80-min bound)
	$(VENV)/bin/workbench train --data $(REAL_DATA) --out $(REAL_MODEL) --preset real --targets $(REAL_TARGETS) \
		--holdout-days 7 --holdout-servers 0.2
	$(VENV)/bin/workbench drift-reference --bundle $(REAL_MODEL) --data $(REAL_DATA)

$(REAL_MODEL)/model.safetensors: | $(STAMP) $(REAL_DATA)/metrics
	$(MAKE) real-model

real-report: $(STAMP) $(REAL_DATA)/metrics $(REAL_MODEL)/model.safetensors  ## score models/real on its held-out VMs next to the baselines and MSTL into reports/ (about 10 min)
	$(VENV)/bin/workbench report 07_real_data -p bundle $(REAL_MODEL) -p data $(REAL_DATA) -p progress False

clean:  ## remove the virtual environment and generated data (keeps the committed demo model)
	rm -rf $(VENV) $(DEMO_DIR)
