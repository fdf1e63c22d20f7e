# `make demo` creates .venv when missing and installs the core from the lock file
# (requirements.lock: every package pinned with its hashes, one lock for CPython 3.11-3.13 on
# Linux x86_64, macOS arm64 and Windows x86_64); `make test` installs everything: the core, and
# torch + MONAI (the `learn` extra) and pyradiomics (the `radiomics` extra) from
# requirements-all.lock (Linux x86_64, CPython 3.11: the project's machines and CI; elsewhere
# those extras are resolved from PyPI against the core lock, see the README).
# `make lock` re-resolves both after a change of pyproject.toml, requirements-build.in or
# lock-constraints.txt; `make check-lock` shows the core lock resolving to wheels on every
# supported platform.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION ?= 0.13.9
LOCK := requirements.lock
LOCK_ALL := requirements-all.lock
STAMP := $(VENV)/.installed
STAMP_ALL := $(VENV)/.installed-all
# Where the CPU build of torch (2.13.0+cpu) is found: a folder of wheels when this machine has
# one (the project's machines: /opt/wheels), else PyTorch's CPU index. Override with
# TORCH_WHEELS=<folder or index URL>.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-*.whl),/opt/wheels,https://download.pytorch.org/whl/cpu)
TORCH_SRC := $(if $(findstring ://,$(TORCH_WHEELS)),--extra-index-url $(TORCH_WHEELS),--find-links $(TORCH_WHEELS))
PYTEST_WORKERS ?= 2
# the platform requirements-all.lock is for
ALL_LOCK_TARGET := import sys, platform; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.system() == "Linux" and platform.machine() == "x86_64"))

.PHONY: install install-all lock check-lock browser test demo lint bench clean

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --compile-bytecode: every module compiled once, here, in parallel; where
# PYTHONDONTWRITEBYTECODE is set (container images, this project's machines) Python would
# otherwise compile each imported module from source in every process (measured: a fifth of
# the test suite's CPU time, and seconds of every `gliomatch` command's start-up)
$(STAMP): $(LOCK) pyproject.toml Makefile | $(UV)
	$(UV) pip install --quiet --python $(PY) --require-hashes --compile-bytecode -r $(LOCK)
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -m compileall -q src >/dev/null
	touch $(STAMP)

# pyradiomics and docopt come only as source: they are built without isolation, so their
# build requirements (numpy, versioneer, setuptools, wheel) go in first, at the locked versions
$(STAMP_ALL): $(LOCK) $(LOCK_ALL) pyproject.toml Makefile | $(UV)
	if $(PY) -c '$(ALL_LOCK_TARGET)'; then \
	  $(UV) pip install --quiet --python $(PY) -c $(LOCK_ALL) numpy versioneer setuptools wheel && \
	  $(UV) pip sync --quiet --python $(PY) $(TORCH_SRC) --no-build-isolation --require-hashes --compile-bytecode $(LOCK_ALL); \
	else \
	  echo "requirements-all.lock is for CPython 3.11 on Linux x86_64: the extras are resolved from PyPI against the core lock"; \
	  $(UV) pip install --quiet --python $(PY) --require-hashes --compile-bytecode -r $(LOCK) && \
	  $(UV) pip install --quiet --python $(PY) -c $(LOCK) --compile-bytecode "torch>=2.4" "monai>=1.3" "pyradiomics>=3.0.1,!=3.1.0"; \
	fi
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q src >/dev/null
	touch $(STAMP) $(STAMP_ALL)

install: $(STAMP)

install-all: $(STAMP_ALL)

# The core lock: universal (every platform, CPython 3.11-3.13, markers where versions differ);
# the versions already in it are kept unless a requirement changed. The full lock: the core
# lock's versions plus the extras, for the project's machines.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev -c lock-constraints.txt --universal \
		--python-version 3.11 --generate-hashes --quiet -o $(LOCK)
	$(UV) pip compile pyproject.toml requirements-build.in --extra learn --extra radiomics \
		--extra dev -c lock-constraints.txt -c $(LOCK) $(TORCH_SRC) --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --quiet -o $(LOCK_ALL)

# The core lock resolves to wheels (no compiler needed) for CPython 3.11, 3.12 and 3.13 on
# Linux x86_64 and macOS arm64 (macOS 14+); a dry run, nothing is installed.
check-lock: | $(UV)
	for v in 3.11 3.12 3.13; do for p in x86_64-manylinux_2_28 aarch64-apple-darwin; do \
	  echo "CPython $$v on $$p"; \
	  MACOSX_DEPLOYMENT_TARGET=14.0 $(UV) pip compile $(LOCK) --python-version $$v \
	    --python-platform $$p --only-binary :all: --no-deps --quiet -o /dev/null || exit 1; \
	done; done

# ruff, and the import-linter layers contract of pyproject.toml (the architecture, checked)
lint: $(STAMP_ALL)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports

# Chromium (Debian's package) for the test that opens the report's interactive view headless;
# where it cannot be installed (no apt-get, not root) that one test skips, saying so.
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { $(APT_CHROMIUM) >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && $(APT_CHROMIUM) >/dev/null 2>&1; }; }; } \
	  || echo "no Chromium: the interactive view's test will skip"

# Two pytest workers, each with single-threaded numba and torch: on 2 cores this is ~30 % faster
# than one process whose kernels use both cores (measured), and it never oversubscribes.
# compileall: gliomatch's own modules (an editable install) compiled once per change, not once
# per test process (see --compile-bytecode above)
test: $(STAMP_ALL) lint browser
	$(PY) -m compileall -q src tests >/dev/null
	NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal --durations=10

demo: $(STAMP)
	$(VENV)/bin/gliomatch demo --out out/demo

bench: $(STAMP)
	$(VENV)/bin/gliomatch bench solver

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
