# Two commands do everything: `make run` (main job) and `make test` (test suite); `make docs` builds
# the API reference.  Each creates the local virtual environment .venv on first use and installs
# what it needs into it, remembering each set of extras with its own stamp file, so `make run` then
# `make test` adds the test extras to the same .venv, and `make test` alone works on a fresh clone.
#   make run              core only (torch, numpy, scipy, matplotlib, gpytorch, scikit-learn, tqdm, zarr, dask)
#   make test             + extras test,nt (pytest, pdoc; neural-tangents/JAX/TensorFlow as test oracle)
#   EXTRAS=test make test + extra test only: no oracle, its tests are skipped by name
#   make docs             + extra docs (pdoc): the API reference in docs/api/
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= test,nt
BASE   := $(VENV)/.installed-base

.PHONY: run test docs venv bench clean

# the virtual environment, pip and torch (pinned first, so the machine's CPU build is used rather than a CUDA download)
$(BASE):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	touch $(BASE)

# the package itself (editable) with one set of extras; "core" means none
$(VENV)/.installed-core: pyproject.toml $(BASE)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-%: pyproject.toml $(BASE)
	$(BIN)/pip install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.installed-core

run: $(VENV)/.installed-core
	$(BIN)/gpmargin data info
	$(BIN)/gpmargin predict --out results/digits-parity

test: $(VENV)/.installed-$(EXTRAS)
	$(BIN)/python -m pytest tests

docs: $(VENV)/.installed-docs
	$(BIN)/python docs/build_api.py --out docs/api

bench: $(VENV)/.installed-core
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/ensemble.py

clean:
	rm -rf $(VENV) results docs/api
