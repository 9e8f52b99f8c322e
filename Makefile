# Set-up and everyday tasks. Everything runs in a project-local virtual environment (.venv)
# that `make` creates and fills on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo lint test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,plot,cluster]"
	touch $(STAMP)

install: $(STAMP)

## The whole chain on a synthesised example: prepare, follow, write out.wav, path.csv, report.png.
demo: $(STAMP)
	$(VENV)/bin/player demo karaoke-demo --force

## Lint (ruff, configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

## The checks CI runs: lint, then the whole test suite (a few minutes on 2 cores).
test: lint
	$(PY) -m pytest -q

## Speed and size of prep on a synthetic 10-minute recording (the other benchmarks: README).
bench: $(STAMP)
	$(PY) -m benchmarks.bench_prep

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info karaoke-demo
