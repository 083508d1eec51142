# fidesr — common tasks. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests and the demo use at most the 2 threads a small machine has; raise for bigger ones.
THREADS ?= 2

.PHONY: help install test test-fast demo tiny-backbone lint format clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python  ## create .venv and install fidesr (editable) with the dev tools and the app
	$(BIN)/pip install --upgrade "pip>=23" "setuptools>=64,<82" wheel
	$(BIN)/pip install -e ".[dev,app]"

test:  ## run the test suite (about 15 minutes on 2 cores)
	OMP_NUM_THREADS=$(THREADS) WANDB_MODE=disabled $(BIN)/python -m pytest -q

test-fast:  ## the suite without the end-to-end runs
	OMP_NUM_THREADS=$(THREADS) WANDB_MODE=disabled $(BIN)/python -m pytest -q -m "not slow"

demo:  ## offline CPU demo: train the tiny model for 300 steps, validate, write samples (< 10 min)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/fidesr-train experiment=demo

tiny-backbone:  ## rebuild the shipped tiny backbone (src/fidesr/backbone/tiny_sd.safetensors) from its spec
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -c "from fidesr.backbone.tiny import main; main()"

lint:  ## static checks: ruff's linter and formatter (what CI runs before the tests)
	$(BIN)/ruff check src tests experiments
	$(BIN)/ruff format --check src tests experiments

format:  ## apply the formatter
	$(BIN)/ruff format src tests experiments

clean:  ## remove run outputs and caches (not the venv)
	rm -rf runs outputs multirun .pytest_cache .ruff_cache
