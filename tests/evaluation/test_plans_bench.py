"""`bench plans`: synthetic patients, equal-volume plans, coverage per database."""

import numpy as np
import pytest

from gliomatch.errors import GliomatchError
from gliomatch.evaluation.plans import PLANS, RECURRENCES, bench_plans


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, resolution=32, seed=8)


def test_bench_plans_is_deterministic_and_bounded(db, tmp_path):
    res = bench_plans([db, db], patients=2, margin_mm=9.0)
    again = bench_plans([db], patients=2, margin_mm=9.0)
    assert res["patients"] == 2 and len(res["rows"]) == 4  # two databases, same patients
    for row, row2 in zip(res["rows"][:2], again["rows"], strict=True):
        assert row == row2
    s = res["summary"][str(len(db))]
    for r in RECURRENCES:
        for p in PLANS:
            assert 0.0 <= s[f"{p}_{r}"] <= 1.0
        assert s[f"best_minus_standard_{r}"] == pytest.approx(s[f"best_{r}"] - s[f"standard_{r}"])
    assert all(np.isfinite(row["plan_cm3"]) and row["plan_cm3"] > 0 for row in res["rows"])


def test_bench_plans_refuses_databases_on_other_grids(db, make_db):
    other = make_db(4, resolution=64, seed=8)
    with pytest.raises(GliomatchError, match="another grid"):
        bench_plans([db, other], patients=1)
    with pytest.raises(GliomatchError, match="patients must be"):
        bench_plans([db], patients=0)
