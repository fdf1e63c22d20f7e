import os

import numpy as np
import pytest

# ANTs registrations are reproducible only single-threaded with a fixed seed, and ITK reads both
# once, before its first filter: set them before anything imports ants.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("ANTS_RANDOM_SEED", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Atlas cache in a temporary folder: tests never touch the user's cache."""
    old = os.environ.get("GLIOMATCH_CACHE")
    os.environ["GLIOMATCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("GLIOMATCH_CACHE", None)
    else:
        os.environ["GLIOMATCH_CACHE"] = old


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
