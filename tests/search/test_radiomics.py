import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.search import Query, get_strategy
from gliomatch.search.radiomics import FEATURES, shape_features


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, seed=41)


def test_features_equal_pyradiomics_directly(db):
    import SimpleITK as sitk
    from radiomics import shape

    f, t = db.masks(4)
    for m in (f, t):
        img = sitk.GetImageFromArray(m.astype(np.float32))
        msk = sitk.GetImageFromArray(m.astype(np.uint8))
        img.SetSpacing((6.0,) * 3)
        msk.SetSpacing((6.0,) * 3)
        ext = shape.RadiomicsShape(img, msk)
        ext.enableAllFeatures()
        direct = ext.execute()
        ours = shape_features(m, 6.0)
        for name in FEATURES:
            assert ours[name] == pytest.approx(float(direct[name]), rel=1e-6), name


def test_empty_mask_features_are_zero():
    assert all(v == 0 for v in shape_features(np.zeros((8, 8, 8), bool), 1.0).values())


def test_com_prefilter_is_the_true_nearest(db):
    s = get_strategy("radiomics", db, candidates=7).ensure_ready()
    q = Query.from_codes(db.codes(11))
    _, com = s.query_features(q)
    got = s.nearest_by_com(com)
    table = pd.read_parquet(s.index_path / "features.parquet")
    d = np.linalg.norm(table[["com_x_mm", "com_y_mm", "com_z_mm"]].to_numpy() - com, axis=1)
    assert set(got) == set(np.argsort(d, kind="stable")[:7])
    scores, ids = s.search_one(q, 3)
    assert ids[0] == 11 and scores[0] == 0.0  # its own features: distance 0
    assert set(ids) <= set(got)


def test_db_features_cli(db, tmp_path):
    out = tmp_path / "f.csv"
    r = CliRunner().invoke(app, ["db", "features", str(db.path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    t = pd.read_csv(out)
    assert len(t) == len(db) and {"flair_Sphericity", "t1gd_MeshVolume", "com_x_mm"} <= set(t)


def test_features_resume_from_saved_parts(make_db, monkeypatch):
    """The features are computed in parts, each saved as it finishes: a rerun computes only
    the parts missing or damaged, and gives the same table; the index build removes them."""
    import gliomatch.search.radiomics as R

    db = make_db(20, seed=42, indexes=("exact",))
    monkeypatch.setattr(R, "PART", 6)  # parts of 6, 6, 6 and 2 tumors
    first = R.database_features(db, workers=1)
    folder = R.parts_folder(db)
    parts = sorted(folder.glob("part-*.parquet"))
    assert len(parts) == 4 and list(first["id"]) == list(range(20))
    parts[1].unlink()
    parts[3].write_bytes(b"not a parquet file")
    computed = []
    real = R._tumor_features
    monkeypatch.setattr(R, "_tumor_features", lambda a: computed.append(list(a[1])) or real(a))
    again = R.database_features(db, workers=1)
    assert computed == [list(range(6, 12)), [18, 19]]
    pd.testing.assert_frame_equal(again, first)
    # a part of other tumors (copied from elsewhere) is not trusted either
    other = pd.read_parquet(parts[0])
    other["id"] += 1
    other.to_parquet(parts[0], index=False)
    computed.clear()
    R.database_features(db, workers=1)
    assert computed == [list(range(0, 6))]
    get_strategy("radiomics", db, workers=1).ensure_ready()
    assert not folder.exists()
    table = pd.read_parquet(get_strategy("radiomics", db).index_path / "features.parquet")
    pd.testing.assert_frame_equal(table, first)
