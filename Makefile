# graphkd: `make demo` and `make test` are the quick start; both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt constraints-dgl.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	$(PY) -m pip install -q -c constraints-dgl.txt dgl packaging "setuptools<71"
	touch $(STAMP)

demo: venv
	$(PY) -m benchmarks.core --quick

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m benchmarks.core

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
