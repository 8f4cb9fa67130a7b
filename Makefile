# Two commands do everything: `make run` (main job) and `make test` (test suite).
# Both create a local virtual environment in .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= test,nt

.PHONY: run test venv bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so the machine's CPU build is used rather than a CUDA download
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q torch
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/gpmargin data info
	$(BIN)/gpmargin predict --out results/digits-parity

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/ensemble.py

clean:
	rm -rf $(VENV) results
