# lbkit: two commands do all the set-up on a fresh machine.
#   make lab-up   the layered lab (netns as root on Linux, else loopback) and the course
#   make test     ruff, unit tests, lab tests and every notebook (nbval)
# Each target bootstraps .venv on its own when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
TOPOLOGY ?= labs/layered.toml
STATE_DIR ?= .lab

.DEFAULT_GOAL := help
.PHONY: help venv system-deps lab-up lab-down lab-status test lint format fast pure bench clean

help: ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing lbkit with its course and test extras"
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
		|| { echo "lbkit needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) -V 2>&1). Use: make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) \
		|| { echo "could not create $(VENV): on Debian/Ubuntu install python3-venv"; rm -rf $(VENV); exit 1; }
	@$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/install.log 2>&1 \
		&& $(BIN)/python -m pip install -e '.[notebooks,dev]' >> $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "pip install failed; full log: $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP) ## create or refresh the virtual environment

system-deps: ## install the system tools the labs use (Debian/Ubuntu as root), else say what is missing
	@sh scripts/system-deps.sh

lab-up: $(STAMP) system-deps ## bring up the lab (TOPOLOGY=labs/layered.toml) and the course; prints how to use them
	@$(BIN)/lbkit lab up $(TOPOLOGY) --course --state-dir $(STATE_DIR)

lab-down: ## stop the lab and the course and remove everything they made
	@if [ -x $(BIN)/lbkit ]; then $(BIN)/lbkit lab down --course --state-dir $(STATE_DIR); \
	else echo "nothing to stop (no $(VENV))"; fi

lab-status: $(STAMP) ## hosts of the running lab, and the course
	@$(BIN)/lbkit lab status --state-dir $(STATE_DIR) || true
	@$(BIN)/lbkit course status --state-dir $(STATE_DIR) || true

lint: $(STAMP) ## ruff over the code and the notebooks
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check lbkit tests bench

format: $(STAMP) ## apply ruff's fixes and formatting
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format lbkit tests bench

test: $(STAMP) system-deps lint ## everything: ruff, unit tests, notebooks (nbval); in CI a skip fails the run
	@$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider $(PYTEST_ARGS)

fast: $(STAMP) ## compile the L7 request path with mypyc (opt-in; the same code, about a fifth less CPU)
	@$(BIN)/python -m lbkit.compiled build --log $(VENV)/compiled.log

pure: ## remove the compiled build: the Python modules run again
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m lbkit.compiled remove; else echo "no $(VENV)"; fi

bench: $(STAMP) ## benchmarks (numbers for docs/benchmarks.md, not pass/fail)
	@$(BIN)/python bench/bench_simulator.py
	@$(BIN)/python bench/bench_lab.py
	@$(BIN)/python bench/bench_l4_rewrite.py
	@$(BIN)/python bench/bench_l4_lab.py

clean: lab-down pure ## remove the virtual environment, caches and the compiled build
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
