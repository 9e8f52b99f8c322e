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

# The project's own modules are compiled to bytecode up front (only those changed since):
# an editable install has none, and where PYTHONDONTWRITEBYTECODE is set Python would
# compile some forty modules again at every start of the player (0.1 s of its start-up).
# The numba kernels are compiled ahead of time into shared/_compiled_kernels (where a C
# compiler is found; else the player compiles them at first use, 0.6 s more start-up).
install: $(STAMP)
	@$(PY) -m compileall -q prep player shared
	@$(PY) -m shared.kernels || true

## The whole chain on a synthesised example: prepare, follow, write out.wav, path.csv, report.png.
demo: install
	$(VENV)/bin/player demo karaoke-demo --force

## Lint (ruff, configured in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .

## The checks CI runs: lint, then the whole test suite (a few minutes on 2 cores).
test: lint
	$(PY) -m pytest -q

## Speed and size of prep on a synthetic 10-minute recording (the other benchmarks: README).
bench: install
	$(PY) -m benchmarks.bench_prep

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info karaoke-demo shared/_compiled_kernels*.so
