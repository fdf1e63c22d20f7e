"""Property: random damage to any one file of a database or its index is detected with a
clear error, never answered with a different result."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gliomatch.database import Database, verify
from gliomatch.errors import GliomatchError
from gliomatch.search import Query, describe_matches, get_strategy

STRATEGIES = ("exact", "ds32")


@pytest.fixture(scope="module")
def pristine(make_db, tmp_path_factory):
    """A tiny database with two indexes, its files, and the answers to two queries."""
    db = make_db(8, resolution=32, seed=5)
    for name in STRATEGIES:
        get_strategy(name, db).ensure_ready()
    files = sorted(
        p.relative_to(db.path).as_posix()
        for p in db.path.rglob("*")
        if p.is_file() and p.name != ".manifest.lock"
    )
    queries = [Query.from_codes(db.codes(i)) for i in (1, 6)]
    return db.path, files, queries, _answers(db.path, queries)


def _answers(path: Path, queries) -> list:
    """What a user gets: each strategy's top-3 with both Dice terms and theta, and the best
    match's density (read from the shards)."""
    db = Database.open(path)
    out = []
    for name in STRATEGIES:
        strat = get_strategy(name, db).ensure_ready()
        for q in queries:
            scores, ids = strat.search_one(q, 3)
            out.append((scores.tolist(), describe_matches(db, q, scores, ids)))
            out.append(db.density(int(ids[0])).tobytes())
    return out


def _damage(path: Path, offset: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    if not data:
        path.write_bytes(bytes([mask]))  # an empty file gains a byte
        return
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    which=st.integers(min_value=0, max_value=10_000),
    offset=st.integers(min_value=0, max_value=1 << 20),
    mask=st.integers(min_value=1, max_value=255),
)
def test_damage_is_detected_or_harmless(pristine, tmp_path_factory, which, offset, mask):
    src, files, queries, expected = pristine
    rel = files[which % len(files)]
    copy = tmp_path_factory.mktemp("damaged") / "db"
    shutil.copytree(src, copy)
    _damage(copy / rel, offset, mask)
    # `db verify` finds the damage, whichever file it hit ...
    with pytest.raises(GliomatchError):
        verify(Database.open(copy))
    # ... and a search either refuses with a clear error or (an index it rebuilt) answers the same
    try:
        got = _answers(copy, queries)
    except GliomatchError:
        pass
    else:
        assert got == expected, f"damage to {rel} changed the answer"


def test_the_files_damaged_include_every_kind(pristine):
    """The property draws from every kind of file a database has (it is not vacuous)."""
    _, files, _, _ = pristine
    kinds = {Path(f).name.split(".")[-1] for f in files}
    assert {"json", "parquet", "npy"} <= kinds
    assert any("densities.zarr/c/" in f for f in files)
    assert np.unique([f.split("/")[0] for f in files]).tolist() == [
        "index",
        "manifest.json",
        "shards",
        "tumors.parquet",
    ]
