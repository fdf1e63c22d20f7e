"""A search spread over Dask workers answers exactly what the local search answers."""

import numpy as np
import pytest

from gliomatch.cluster import dask_client
from gliomatch.errors import GliomatchError
from gliomatch.search import Query, get_strategy
from gliomatch.search.sharded import ShardedStrategy, merge_top_k


def test_merge_keeps_the_global_order_ties_by_id():
    a = (np.array([0.9, 0.5]), np.array([7, 3]))
    b = (np.array([0.9, 0.8]), np.array([2, 9]))
    s, i = merge_top_k([a, b], 3)
    assert i.tolist() == [2, 7, 9] and s.tolist() == [0.9, 0.9, 0.8]


def test_sharded_search_equals_local_search_on_two_workers(make_db):
    db = make_db(24, resolution=32, seed=3, indexes=("exact", "ds32"))
    queries = [Query.from_codes(db.codes(i)) for i in (0, 5, 17)]
    # a query with ties: a copy of a tumor's masks shifted by one voxel matches several
    f, t = db.masks(9)
    queries.append(Query.from_masks(np.roll(f, 1, axis=0), np.roll(t, 1, axis=0), db.shape))
    for name in ("exact", "ds32"):
        local = get_strategy(name, db)
        want_s, want_i = local.search(queries, 7)
        with dask_client(workers=2) as client:
            sharded = ShardedStrategy(get_strategy(name, db), client, parts=3)
            got_s, got_i = sharded.search(queries, 7)
            one_s, one_i = sharded.search_one(queries[0], 7)
        assert got_i.shape == (4, 7)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
        np.testing.assert_array_equal(one_i, want_i[0])


def test_only_block_strategies_shard(make_db):
    db = make_db(24, resolution=32, seed=3)
    with pytest.raises(GliomatchError, match="cannot be sharded"):
        ShardedStrategy(get_strategy("loop", db), client=None)


def test_search_command_over_a_local_cluster(make_db, tmp_path):
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from gliomatch.cli import app

    db = make_db(24, resolution=32, seed=3)
    f, t = db.masks(4)
    for name, m in (("f", f), ("t", t)):
        nib.save(nib.Nifti1Image(m.astype(np.uint8), db.affine), str(tmp_path / f"{name}.nii.gz"))
    args = ["search", str(db.path), "--flair", str(tmp_path / "f.nii.gz")]
    args += ["--t1gd", str(tmp_path / "t.nii.gz"), "--k", "5", "--json"]
    local = json.loads(CliRunner().invoke(app, args).output.strip().splitlines()[-1])
    r = CliRunner().invoke(app, [*args, "--dask-workers", "2"])
    assert r.exit_code == 0, r.output
    spread = json.loads(r.output.strip().splitlines()[-1])
    assert [m["id"] for m in spread["matches"]] == [m["id"] for m in local["matches"]]
    assert spread["matches"][0]["id"] == 4
    r = CliRunner().invoke(app, [*args, "--strategy", "loop", "--dask-workers", "2"])
    assert r.exit_code == 1 and "cannot be sharded" in r.output
