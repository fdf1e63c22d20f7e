import json

import numpy as np
import pytest

from gliomatch.database import Database, verify
from gliomatch.database.downsampled import MaskCache, downsampled_masks, mask_cache
from gliomatch.errors import GliomatchError


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(14, resolution=32, seed=12, indexes=())


@pytest.mark.parametrize("size", [8, 16, 24, 32])
def test_cache_equals_reading_each_tumor(db, size):
    """The cached masks are the reference's, tumor for tumor, in any order of ids (24: a
    zoom that is not a power of two; 32: the database's own grid)."""
    calls = []
    cache = mask_cache(db, size, progress=lambda d, t, w: calls.append((d, t)))
    assert calls[-1] == (len(db), len(db))
    ids = np.array([5, 0, 13, 5, 7])
    for m in ("flair", "t1gd"):
        got = cache.masks(ids, m)
        assert got.dtype == np.uint8 and got.shape == (5, size, size, size)
        assert np.array_equal(got, downsampled_masks(db, ids, m, size))
    assert cache.build_seconds > 0 and verify(db)["ok"]


def test_cache_is_built_once_checked_and_tied_to_its_database(make_db):
    db = make_db(6, resolution=32, seed=13, indexes=())  # its own: this test corrupts it
    cache = mask_cache(db, 16)
    folder = cache.folder
    stamp = (folder / "flair.npy").stat().st_mtime_ns
    mask_cache(Database.open(db.path), 16)  # already there: read, not rebuilt
    assert (folder / "flair.npy").stat().st_mtime_ns == stamp
    # a cache that claims another database (or another zoom) is built again
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "db": "0" * 16}))
    fresh = Database.open(db.path)
    assert not MaskCache(fresh, 16).is_built()
    assert np.array_equal(
        mask_cache(fresh, 16).masks([3], "t1gd"), downsampled_masks(db, [3], "t1gd", 16)
    )
    # a corrupted file is refused by its checksum, not read
    arr = np.load(folder / "t1gd.npy")
    arr[0, 0] ^= 1
    np.save(folder / "t1gd.npy", arr)
    with pytest.raises(GliomatchError, match="checksum"):
        mask_cache(Database.open(db.path), 16)


def test_bad_requests(db):
    with pytest.raises(GliomatchError, match="size"):
        MaskCache(db, 64)
    with pytest.raises(GliomatchError, match="size"):
        MaskCache(db, 0)
    cache = MaskCache(db, 8)
    with pytest.raises(GliomatchError, match="ensure"):
        cache.masks([0], "flair")
    with pytest.raises(GliomatchError, match="modality"):
        cache.ensure().masks([0], "t2")
