"""Shared by the tests (tests/) and the doctests of the public API (src/gliomatch): the user's
cache is never touched, and a doctest may use a tiny database as ``db``."""

import os

import pytest

# ANTs registrations are reproducible only single-threaded with a fixed seed, and ITK reads both
# once, before its first filter: set them before anything imports ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("ANTS_RANDOM_SEED", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Atlas cache in a temporary folder of this run: tests never touch the user's cache, and
    the pytest-xdist workers of one run share it (each atlas is built once per run; entries are
    written atomically and checked on reading, so the workers cannot spoil them)."""
    old = os.environ.get("GLIOMATCH_CACHE")
    base = tmp_path_factory.getbasetemp()
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # .../pytest-N
    cache = run / "gliomatch-cache"
    cache.mkdir(exist_ok=True)
    os.environ["GLIOMATCH_CACHE"] = str(cache)
    yield
    if old is None:
        os.environ.pop("GLIOMATCH_CACHE", None)
    else:
        os.environ["GLIOMATCH_CACHE"] = old


@pytest.fixture(scope="session")
def _doctest_db(tmp_path_factory):
    from gliomatch.database import BuildConfig, build_database
    from gliomatch.search import get_strategy

    folder = tmp_path_factory.mktemp("doctest-db") / "db"
    db = build_database(folder, 6, BuildConfig(resolution=32, seed=1, shard_size=4), workers=1)
    get_strategy("exact", db).ensure_ready()
    return db


@pytest.fixture(autouse=True)
def _doctest_names(request, doctest_namespace):
    """A doctest whose examples name ``db`` gets a 6-tumor 32^3 database (built once)."""
    from _pytest.doctest import DoctestItem

    item = request.node
    if isinstance(item, DoctestItem) and any("db" in ex.source for ex in item.dtest.examples):
        doctest_namespace["db"] = request.getfixturevalue("_doctest_db")
