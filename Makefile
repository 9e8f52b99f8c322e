# Set-up and everyday tasks. Everything runs in a project-local virtual environment (.venv)
# that `make` creates and fills on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,plot]"
	touch $(STAMP)

install: $(STAMP)

## The whole chain on a synthesised example: prepare, follow, write out.wav, path.csv, report.png.
demo: $(STAMP)
	$(VENV)/bin/player demo karaoke-demo --force

## Default test run (a few minutes on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## Everything, including the long-running tests.
test-all: $(STAMP)
	$(PY) -m pytest -q

## Speed and size figures (see benchmarks/README.md).
bench: $(STAMP)
	$(PY) benchmarks/bench_prep.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info karaoke-demo
