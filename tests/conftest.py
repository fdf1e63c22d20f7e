"""Fixtures of the test suite (the cache isolation and ITK settings: the repository's conftest)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def atlas32():
    from gliomatch.atlas import mni152_atlas

    return mni152_atlas(32)


@pytest.fixture(scope="session")
def atlas64():
    from gliomatch.atlas import mni152_atlas

    return mni152_atlas(64)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def make_db(tmp_path_factory):
    """Factory for tiny test databases: ``make_db(n, resolution, seed, shard_size, indexes)``,
    built as `gliomatch db build` builds them: with the exact index (``indexes``: the ones to
    build, the explicit step before searching)."""
    from gliomatch.database import BuildConfig, build_database
    from gliomatch.search import get_strategy

    def make(n, resolution=32, seed=0, shard_size=4, indexes=("exact",)):
        folder = tmp_path_factory.mktemp(f"db-r{resolution}-s{seed}") / "db"
        cfg = BuildConfig(resolution=resolution, seed=seed, shard_size=shard_size)
        db = build_database(folder, n, cfg, workers=1)
        for name in indexes:
            get_strategy(name, db).ensure_ready()
        return db

    return make
