"""`bench plans`: synthetic patients, equal-volume plans, coverage per database."""

import numpy as np
import pytest

from gliomatch.errors import GliomatchError
from gliomatch.evaluation.plans import PLANS, RECURRENCES, bench_plans


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, resolution=32, seed=8)


def test_bench_plans_is_deterministic_and_bounded(db, tmp_path):
    res = bench_plans([db], patients=2, margin_mm=9.0)
    again = bench_plans([db], patients=2, margin_mm=9.0)
    assert res["patients"] == 2 and len(res["rows"]) == 2
    assert res["rows"] == again["rows"]
    s = res["summary"][str(len(db))]
    for r in RECURRENCES:
        for p in PLANS:
            assert 0.0 <= s[f"{p}_{r}"] <= 1.0
        assert s[f"best_minus_standard_{r}"] == pytest.approx(s[f"best_{r}"] - s[f"standard_{r}"])
    assert all(np.isfinite(row["plan_cm3"]) and row["plan_cm3"] > 0 for row in res["rows"])


def test_bench_plans_compares_databases_of_other_resolutions_on_the_same_patients(db, make_db):
    """A database at another resolution of the same atlas is searched by resampling: the same
    patients, on the first database's grid, so the standard plan is the same for both."""
    other = make_db(30, resolution=48, seed=8)
    res = bench_plans([db, other], patients=2, margin_mm=9.0)
    assert list(res["summary"]) == [f"{len(db)}@32", f"{len(other)}@48"]
    a = [r for r in res["rows"] if r["database"] == f"{len(db)}@32"]
    b = [r for r in res["rows"] if r["database"] == f"{len(other)}@48"]
    assert [r["patient"] for r in a] == [r["patient"] for r in b] and a
    for x, y in zip(a, b, strict=True):
        assert x["plan_cm3"] == y["plan_cm3"] and x["standard_enhancing"] == y["standard_enhancing"]
    assert res["summary"][f"{len(other)}@48"]["resolution"] == 48


def test_bench_plans_refuses_another_atlas_and_no_patients(db, monkeypatch):
    from dataclasses import replace

    class OtherAtlas:  # the same database, as if built in a user atlas on another grid
        path = db.path

        def __len__(self):
            return len(db)

        def atlas(self):
            a = db.atlas()
            return replace(a, source="user:/elsewhere", affine=a.affine * 1.0 + np.eye(4) * 0.5)

    with pytest.raises(GliomatchError, match="another atlas"):
        bench_plans([db, OtherAtlas()], patients=1)
    with pytest.raises(GliomatchError, match="patients must be"):
        bench_plans([db], patients=0)
    with pytest.raises(GliomatchError, match="same size and grid"):
        bench_plans([db, db], patients=1)
