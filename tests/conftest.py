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
    """Factory for tiny test databases: ``make_db(n, resolution, seed, shard_size)``."""
    from gliomatch.database import BuildConfig, build_database

    def make(n, resolution=32, seed=0, shard_size=4):
        folder = tmp_path_factory.mktemp(f"db-r{resolution}-s{seed}") / "db"
        cfg = BuildConfig(resolution=resolution, seed=seed, shard_size=shard_size)
        return build_database(folder, n, cfg, workers=1)

    return make
