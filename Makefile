# `make demo` and `make test` create .venv when missing, install everything, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch first: a looser requirement would pull several GB of CUDA packages
	$(PY) -m pip install --quiet torch==2.13.0
	# pyradiomics builds from source and needs numpy and versioneer in the build environment
	$(PY) -m pip install --quiet numpy versioneer
	$(PY) -m pip install --quiet --no-build-isolation pyradiomics
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check src tests

test: $(STAMP) lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/gliomatch demo --out out/demo

bench: $(STAMP)
	$(VENV)/bin/gliomatch bench solver

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
