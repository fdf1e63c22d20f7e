# `make demo` and `make test` create .venv when missing and install everything from the lock
# file (requirements.lock, every package pinned with its hashes), then run.
# `make lock` re-resolves the lock after a change of pyproject.toml or requirements-build.in.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION ?= 0.13.9
LOCK := requirements.lock
STAMP := $(VENV)/.installed
# Where the CPU build of torch (2.13.0+cpu) is found: a folder of wheels or an index URL.
# On the project's machines it is /opt/wheels; elsewhere point it at PyTorch's CPU index.
TORCH_WHEELS ?= /opt/wheels
TORCH_SRC := $(if $(findstring ://,$(TORCH_WHEELS)),--extra-index-url $(TORCH_WHEELS),--find-links $(TORCH_WHEELS))
PYTEST_WORKERS ?= 2

.PHONY: install lock test demo lint bench clean

$(STAMP): $(LOCK) pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	# pyradiomics and docopt come only as source: they are built without isolation, so their
	# build requirements (numpy, versioneer, setuptools, wheel) go in first, at the locked versions
	$(UV) pip install --quiet --python $(PY) -c $(LOCK) numpy versioneer setuptools wheel
	# --compile-bytecode: every module compiled once, here, in parallel; where
	# PYTHONDONTWRITEBYTECODE is set (container images, this project's machines) Python would
	# otherwise compile each imported module from source in every process (measured: a fifth of
	# the test suite's CPU time, and seconds of every `gliomatch` command's start-up)
	$(UV) pip sync --quiet --python $(PY) $(TORCH_SRC) --no-build-isolation --require-hashes --compile-bytecode $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q src >/dev/null
	touch $(STAMP)

install: $(STAMP)

lock: $(VENV)/bin/python
	test -x $(UV) || $(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(UV) pip compile pyproject.toml requirements-build.in --extra dev $(TORCH_SRC) \
		--python-version 3.11 --generate-hashes --quiet -o $(LOCK)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# ruff, and the import-linter layers contract of pyproject.toml (the architecture, checked)
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports

# Two pytest workers, each with single-threaded numba and torch: on 2 cores this is ~30 % faster
# than one process whose kernels use both cores (measured), and it never oversubscribes.
# compileall: gliomatch's own modules (an editable install) compiled once per change, not once
# per test process (see --compile-bytecode above)
test: $(STAMP) lint
	$(PY) -m compileall -q src tests >/dev/null
	NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=10

demo: $(STAMP)
	$(VENV)/bin/gliomatch demo --out out/demo

bench: $(STAMP)
	$(VENV)/bin/gliomatch bench solver

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
