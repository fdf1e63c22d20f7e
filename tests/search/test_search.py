import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from gliomatch.database import BuildConfig, build_database
from gliomatch.errors import GliomatchError
from gliomatch.search import Query, dice, get_strategy
from gliomatch.search.strategies import downsample

CFG = BuildConfig(resolution=32, seed=3, shard_size=4)


def indexed(db, *names):
    """``db`` with the indexes of ``names`` built: the explicit step before searching."""
    for name in names:
        get_strategy(name, db).ensure_ready()
    return db


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    db = build_database(tmp_path_factory.mktemp("sdb") / "db", 60, CFG, workers=1)
    return indexed(db, "exact", "ds32")


@pytest.fixture(scope="module")
def db64(tmp_path_factory):
    cfg = BuildConfig(resolution=64, seed=4, shard_size=4)
    db = build_database(tmp_path_factory.mktemp("sdb64") / "db", 24, cfg, workers=1)
    return indexed(db, "exact", "ds64", "ds32")


@pytest.fixture(scope="module")
def strategies(db):
    return {
        "loop": get_strategy("loop", db, workers=1),
        "exact": get_strategy("exact", db),
    }


def _blob(rng, shape, centre=None, radius=None):
    centre = rng.uniform(4, shape[0] - 4, 3) if centre is None else np.asarray(centre)
    radius = rng.uniform(2, 8) if radius is None else radius
    g = np.indices(shape).astype(float)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 6
    d = np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(3))) + noise
    flair = d < radius
    t1gd = d < radius * rng.uniform(0.2, 0.8)
    if not flair.any():
        flair[tuple(np.clip(centre.astype(int), 0, shape[0] - 1))] = True
    return flair, t1gd


def _assert_same(a, b):
    (sa, ia), (sb, ib) = a, b
    assert np.array_equal(ia, ib), (ia, ib)
    assert np.allclose(sa, sb, rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 80),  # up to more than the 60 tumors
    w_t1gd=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    w_flair=st.sampled_from([0.25, 1.0, 2.0]),
)
def test_exact_equals_loop_property(db, seed, k, w_t1gd, w_flair):
    """Property: for any blob query, k and weights, exact returns loop's top-k (ids identical,
    scores to 1e-9), ties broken by id alike."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random blob's core may stick out of its FLAIR
        q = Query.from_masks(*_blob(rng, (32, 32, 32)))
    w = dict(w_t1gd=w_t1gd, w_flair=w_flair)
    loop = get_strategy("loop", db, workers=1, **w)
    _assert_same(loop.search_one(q, k), get_strategy("exact", db, **w).search_one(q, k))


@pytest.mark.parametrize("i", [0, 17, 59])
def test_query_equal_to_entry_ranks_first(db, strategies, i):
    q = Query.from_codes(db.codes(i))
    for s in strategies.values():
        scores, ids = s.search_one(q, 5)
        assert ids[0] == i and scores[0] == 2.0


def test_query_at_grid_border(strategies):
    rng = np.random.default_rng(5)
    for centre in ([0, 0, 0], [31, 31, 31], [0, 16, 31]):
        q = Query.from_masks(*_blob(rng, (32, 32, 32), centre=centre, radius=6))
        _assert_same(strategies["loop"].search_one(q, 10), strategies["exact"].search_one(q, 10))


def test_empty_t1gd_allowed(strategies):
    rng = np.random.default_rng(6)
    flair, _ = _blob(rng, (32, 32, 32), centre=[14, 16, 14], radius=7)
    q = Query.from_masks(flair, np.zeros_like(flair))
    a = strategies["loop"].search_one(q, 8)
    _assert_same(a, strategies["exact"].search_one(q, 8))
    assert np.all(a[0] <= 1.0)  # Dice_T1Gd is 0 against every (non-empty) tumor core


def test_k_larger_than_db(db, strategies):
    rng = np.random.default_rng(7)
    q = Query.from_masks(*_blob(rng, (32, 32, 32)))
    a = strategies["loop"].search_one(q, 1000)
    b = strategies["exact"].search_one(q, 1000)
    assert len(a[1]) == len(db)
    _assert_same(a, b)
    assert sorted(b[1]) == list(range(len(db)))


def test_weights(db):
    rng = np.random.default_rng(8)
    q = Query.from_masks(*_blob(rng, (32, 32, 32), centre=[15, 16, 14], radius=8))
    loop = get_strategy("loop", db, workers=1, w_flair=2.0, w_t1gd=0.5)
    ex = get_strategy("exact", db, w_flair=2.0, w_t1gd=0.5)
    _assert_same(loop.search_one(q, 10), ex.search_one(q, 10))


def test_scores_are_dice(db, strategies):
    rng = np.random.default_rng(9)
    q = Query.from_masks(*_blob(rng, (32, 32, 32), centre=[15, 16, 14], radius=8))
    scores, ids = strategies["exact"].search_one(q, 3)
    for s, i in zip(scores, ids, strict=True):
        f, t = db.masks(int(i))
        assert s == pytest.approx(dice(f, q.flair) + dice(t, q.t1gd), abs=1e-12)


def test_loop_parallel_equals_serial(db):
    rng = np.random.default_rng(10)
    q = Query.from_masks(*_blob(rng, (32, 32, 32), centre=[15, 16, 14], radius=8))
    _assert_same(
        get_strategy("loop", db, workers=1).search_one(q, 7),
        get_strategy("loop", db, workers=2).search_one(q, 7),
    )


@pytest.mark.parametrize("name, size", [("ds32", 32), ("ds64", 64)])
def test_downsampled_agree_with_numpy(db64, name, size):
    rng = np.random.default_rng(11)
    strat = get_strategy(name, db64)
    for _ in range(3):
        q = Query.from_masks(*_blob(rng, (64, 64, 64), centre=[28, 34, 30], radius=14))
        scores, ids = strat.search_one(q, 5)
        qf, qt = downsample(q.flair, size), downsample(q.t1gd, size)
        ref = []
        for i in range(len(db64)):
            f, t = db64.masks(i)
            ref.append(dice(downsample(t, size), qt) + dice(downsample(f, size), qf))
        ref = np.asarray(ref)
        order = np.lexsort((np.arange(len(ref)), -ref))[:5]
        assert np.array_equal(ids, order)
        assert np.allclose(scores, ref[order], atol=1e-12)


def test_downsample_is_order0_zoom():
    m = np.zeros((64, 64, 64), bool)
    m[10:30, 5:9, 40:41] = True
    d = downsample(m, 32)
    assert d.shape == (32, 32, 32)
    assert np.array_equal(d, ndimage.zoom(m.astype(np.uint8), 0.5, order=0) > 0)


def test_index_is_rebuilt_for_another_db(db, tmp_path):
    other = build_database(tmp_path / "o", 10, BuildConfig(resolution=32, seed=99), workers=1)
    s = get_strategy("exact", other)
    assert not s.is_built()
    s.ensure_ready()
    assert s.is_built()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Query.from_masks(np.zeros((32, 32, 32)), np.zeros((32, 32, 32))), "empty"),
        (
            lambda: Query.from_masks(np.ones((16, 16, 16)), np.ones((16, 16, 16)), (32,) * 3),
            "database grid",
        ),
        (lambda: Query.from_masks(np.full((32, 32, 32), 2), np.ones((32, 32, 32))), "binary"),
        (lambda: Query.from_masks(np.full((32, 32, 32), 0.5), np.ones((32, 32, 32))), "binary"),
        (lambda: Query.from_masks(np.full((32, 32, 32), np.nan), np.ones((32, 32, 32))), "NaN"),
        (lambda: Query.from_masks(np.ones((32, 32)), np.ones((32, 32))), "3-D"),
    ],
)
def test_bad_queries(make, message):
    with pytest.raises(GliomatchError, match=message):
        make()


def test_bad_search_arguments(db, strategies):
    q = Query.from_codes(db.codes(0))
    with pytest.raises(GliomatchError, match="k must"):
        strategies["exact"].search_one(q, 0)
    with pytest.raises(GliomatchError, match="unknown strategy"):
        get_strategy("nope", db)
    with pytest.raises(GliomatchError, match="weight"):
        get_strategy("exact", db, w_flair=-1)
    small = Query.from_masks(np.ones((16, 16, 16)), np.ones((16, 16, 16)))
    with pytest.raises(GliomatchError, match="grid"):
        strategies["exact"].search_one(small, 3)


def test_batch_search_is_nq_by_k_and_equals_single_queries(db):
    queries = [Query.from_codes(db.codes(i), affine=db.affine) for i in (3, 11, 40)]
    for name in ("exact", "ds32", "exact+rr5"):
        s = get_strategy(name, db)
        assert s.metric == "similarity"
        scores, ids = s.search(queries, 6)
        assert scores.shape == ids.shape == (3, 6)
        for row, q in enumerate(queries):
            one_scores, one_ids = s.search_one(q, 6)
            assert np.array_equal(ids[row], one_ids) and np.allclose(scores[row], one_scores)
    assert get_strategy("exact", db).search(queries, 10**6)[1].shape == (3, len(db))
    # one Query is a batch of one: still (nq, k)
    assert get_strategy("exact", db).search(queries[0], 4)[1].shape == (1, 4)
    with pytest.raises(GliomatchError, match="one Query"):
        get_strategy("exact", db).search_one(queries, 4)


def test_query_on_another_grid_is_refused(db):
    shifted = db.affine.copy()
    shifted[0, 3] += 3.0  # same shape, another place in the world
    q = Query.from_codes(db.codes(0), affine=shifted)
    with pytest.raises(GliomatchError, match="another grid"):
        get_strategy("exact", db).search_one(q, 3)
    with pytest.raises(GliomatchError, match="no query"):
        get_strategy("exact", db).search([], 3)


def test_exactness_is_an_attribute_not_a_name(db64):
    """Callers ask a strategy whether its scores and its ranking are the ground truth's; no
    caller checks names or classes."""
    from gliomatch.search import get_strategy

    expect = {
        "loop": (True, True),
        "exact": (True, True),
        "ds32": (False, False),
        "ds64": (True, True),  # at the database's own resolution, downsampling is the identity
        "ds32+rr5": (True, False),  # exact scores of candidates a proxy chose
        "exact+rr5": (True, True),
    }
    for name, (scores, ranking) in expect.items():
        s = get_strategy(name, db64)
        assert (s.exact_scores, s.exact_ranking) == (scores, ranking), name


def test_the_ground_truth_comes_through_the_interface(db, db64):
    """loop is an index like any other: its scores are the exact ones, as exact's are."""
    from gliomatch.evaluation.engine import exact_ranking

    q = Query.from_codes(db.codes(17), affine=db.affine)
    a = exact_ranking(get_strategy("exact", db), q)
    b = exact_ranking(get_strategy("loop", db, workers=1), q)
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x, y)
    ids = np.array([3, 17, 40])
    assert np.allclose(get_strategy("loop", db, workers=1).scores(q, ids)[0], a[0][ids])
    q64 = Query.from_codes(db64.codes(2), affine=db64.affine)
    with pytest.raises(GliomatchError, match="not the ground truth"):
        exact_ranking(get_strategy("ds32", db64), q64)  # Dice at 32^3 of a 64^3 database


def test_searching_never_builds_an_index(make_db):
    """Building is the explicit step (`db index`, ``ensure_ready``); a search of an unbuilt
    index refuses, naming the command, and leaves the database as it was."""
    db = make_db(6, resolution=32, seed=5, indexes=())
    before = (db.path / "manifest.json").read_bytes()
    q = Query.from_codes(db.codes(0))
    for name in ("exact", "ds32", "exact+rr3"):
        with pytest.raises(GliomatchError, match="index .* is not built.*gliomatch db index"):
            get_strategy(name, db).search_one(q, 2)
    assert not (db.path / "index" / "exact").exists()
    assert (db.path / "manifest.json").read_bytes() == before
    assert get_strategy("exact", db).index_info() == {"index_bytes": 0, "build_seconds": None}
    s = get_strategy("exact", db).ensure_ready()
    assert s.search_one(q, 2)[1][0] == 0 and (db.path / "index" / "exact").is_dir()
    # what the index costs: its files' size on disk and its build time, recorded when built
    info = s.index_info()
    files = (db.path / "index" / "exact").rglob("*")
    assert info["index_bytes"] == sum(p.stat().st_size for p in files if p.is_file()) > 0
    assert 0 < info["build_seconds"] < 600
    # a re-ranking strategy holds its base's index and the exact one it re-scores with
    ds = get_strategy("ds32", db).ensure_ready()
    rr = get_strategy("ds32+rr3", db).index_info()
    assert rr["index_bytes"] == ds.index_info()["index_bytes"] + info["index_bytes"]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.6))
def test_the_fast_parts_of_exact_search_equal_their_references(seed, fill):
    """The query's box (one numba pass), its blocks packed inside that box, and the fused
    score bounds equal the NumPy forms they replace."""
    from gliomatch.masks import mask_bbox
    from gliomatch.search.blocks import box_sums, box_sums_pair, mask_box, query_blocks
    from gliomatch.search.engine import BlockIndex, PackedQuery

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 20, size=3))
    f = rng.random(shape) < fill * rng.random()
    t = rng.random(shape) < 0.5
    assert mask_box(f).tolist() == mask_bbox(f).tolist()
    boxed, full = query_blocks(f, t, mask_box(f)), query_blocks(f, t)
    assert all(np.array_equal(a, b) for a, b in zip(boxed, full, strict=True))
    sat_f, sat_t = box_sums_pair(f, t, mask_box(f))
    assert np.array_equal(sat_f, box_sums(f, mask_box(f)))
    assert np.array_equal(sat_t, box_sums(f & t, mask_box(f)))
    masks = [(rng.random(shape) < rng.random() * 0.5, rng.random(shape) < 0.5) for _ in range(9)]
    index = BlockIndex.from_masks(masks, shape)
    w = (float(rng.random() * 2), float(rng.random() * 2))
    fast = index.upper_bounds(PackedQuery.pack(f, t), *w)
    np.testing.assert_allclose(fast, index.upper_bounds_reference(f, t, *w), rtol=1e-12)
    # a bound: never below the exact score
    exact = index.scores(np.arange(len(masks)), PackedQuery.pack(f, t), *w)[0]
    assert np.all(fast >= exact - 1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.integers(1, 60), st.integers(1, 7), st.integers(0, 2**31 - 1))
def test_top_k_partial_selection_equals_sorting_everything(n, k, levels, seed):
    """Score descending, id ascending on ties -- with many ties at the k-th score (a few
    distinct levels), ids in any order -- the same answer as the full sort."""
    from gliomatch.search.base import top_k, top_k_reference

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, n) / levels - 0.5
    ids = rng.permutation(10 * n)[:n]
    k = min(k, n)
    got, want = top_k(scores, ids, k), top_k_reference(scores, ids, k)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
