# One entry point for people and CI. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
BT     := $(VENV)/bin/braintumor
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

.PHONY: setup demo test lint docs clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is needed)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all,dev]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything

demo: $(STAMP)  ## phantoms -> train (EfficientNet-Lite0, ImageNet weights) -> evaluate on fresh phantoms
	$(BT) synth data/phantoms --n 300 --size 128 --seed 0
	$(BT) synth data/phantoms-test --n 100 --size 128 --seed 1
	rm -rf $(DEMO)
	$(BT) train data/phantoms --img-size 96 --epochs-frozen 3 --epochs 6 --out $(DEMO)
	$(BT) evaluate $(DEMO) --data data/phantoms-test

test: $(STAMP)  ## the test suite (what .ci/run calls)
	$(PY) -m pytest -q

docs: $(STAMP)  ## API reference + user guide -> site/ (warnings are errors)
	$(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs data/phantoms data/phantoms-test
