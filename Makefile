# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns.db

.PHONY: demo test test-fast lint format ui search-ui data bench bench-e2e clean

# The virtual environment: rebuilt only when pyproject.toml changes (the directory is the stamp).
$(VENV): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	@# pip compiles the bytecode on one core (~100 s here); compileall on every core takes half.
	@# The bytecode is a cache: a module left out (tests, torch's Python-3.12-only file) compiles
	@# at import, as it would without it.
	$(PY) -m compileall -q -j 0 -x '/tests/|py312' $(VENV)/lib > /dev/null || true
	touch $(VENV)

# Fashion-MNIST from Debian's dataset-fashion-mnist package (no root needed; see the script).
data: $(VENV)
	bash scripts/fetch_fashion_mnist.sh

demo: $(VENV) data
	$(PY) studies/run.py demo
	$(PY) analysis/make_tables.py --only fig5

# Two pytest workers (pytest-xdist), each taking a whole test module at a time, the Slurm tests as
# one group (tests/conftest.py): on CI 27.8 min against 41.5 in one process (docs/benchmarks.md).
# TEST_WORKERS=0 runs them in one process (e.g. to see a test's prints with -s).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: $(VENV)
	$(PYTEST)

# The unit tests without the slow ones: what a developer runs every few minutes.
test-fast: $(VENV)
	$(PYTEST) -m "not slow" tests/unit

lint: $(VENV)
	$(PY) -m ruff check mae studies analysis benchmarks tests
	$(PY) -m ruff format --check mae studies analysis benchmarks tests

format: $(VENV)
	$(PY) -m ruff format mae studies analysis benchmarks tests
	$(PY) -m ruff check --fix mae studies analysis benchmarks tests

ui: $(VENV)
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --artifacts-destination $(CURDIR)/mlartifacts --host 127.0.0.1 --port $${PORT:-5000}

# optuna-dashboard on a search's Optuna storage (SEARCH=<name>, default finetune_search; its
# file's `storage`, by default optuna.db beside the MLflow store).
search-ui: $(VENV)
	$(VENV)/bin/optuna-dashboard "$$($(PY) -m mae.sweep.search_cli $${SEARCH:-finetune_search})" --host 127.0.0.1 --port $${PORT:-8080}

# Every benchmark but the end-to-end one (report in benchmarks/out/report.md); `make bench-e2e`
# times make demo and the tiny mask_ratio_sweep in a fresh store (tens of minutes).
bench: $(VENV)
	$(PY) -m benchmarks

bench-e2e: $(VENV) data
	$(PY) -m benchmarks --only e2e

clean:
	rm -rf analysis/out runs .submitit
