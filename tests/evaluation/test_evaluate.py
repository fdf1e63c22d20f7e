import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.errors import GliomatchError
from gliomatch.evaluation.harness import evaluate, real_queries, synthetic_queries
from gliomatch.patient.synthetic import make_patient
from gliomatch.search import Strategy, get_strategy, register_strategy

runner = CliRunner()


@register_strategy("random-test")
class RandomStrategy(Strategy):
    """A deliberately useless strategy: uniformly random ids (chance level)."""

    name = "random-test"
    needs_index = False

    def __init__(self, db, **kw):
        super().__init__(db, **kw)
        self.rng = np.random.default_rng(0)

    def _search(self, query, k):
        ids = self.rng.permutation(len(self.db))[:k]
        return np.zeros(len(ids)), ids


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, seed=21)


@pytest.fixture(scope="module")
def queries(db):
    return synthetic_queries(db, 60, seed=0)


def test_harness_end_to_end(db, queries, tmp_path):
    s = evaluate(
        db,
        tmp_path,
        queries=queries,
        strategies=["exact", "ds32", "random-test"],
        k=15,
        loop_check=2,
        log=lambda m: None,
    )
    table = {r["strategy"]: r for r in s["table"]}
    assert table["exact"]["top1"] == 1.0 and table["exact"]["top15"] == 1.0
    # chance level: the random best lands in the true top-j with probability j / n
    n = len(db)
    r = table["random-test"]
    assert r["top1"] < 0.15
    assert abs(r["top15"] - 15 / n) < 0.2
    assert s["exact_equals_loop_on_sample"] is True
    for name in (
        "table_strategies.md",
        "table_strategies.csv",
        "dice_distribution.png",
        "rank_of_best.png",
        "examples.png",
        "parameter_recovery.png",
        "parameter_recovery.csv",
        "summary.json",
        "report.html",
    ):
        assert (tmp_path / name).is_file(), name
    csv = pd.read_csv(tmp_path / "table_strategies.csv")
    assert set(csv.strategy) == {"exact", "ds32", "random-test"}
    # latency median and p95, the index's size and build time beside each strategy
    row = csv.set_index("strategy")
    assert (row.p95_ms >= row.median_ms).all()
    assert row.index_mb["ds32"] > 0 and row.index_build_s["ds32"] >= 0
    assert row.index_mb["random-test"] == 0 and np.isnan(row.index_build_s["random-test"])
    assert table["ds32"]["index_bytes"] == get_strategy("ds32", db).index_info()["index_bytes"]
    # one row per strategy with the papers' published figures beside ours
    papers = (tmp_path / "table_papers.md").read_text().splitlines()
    ds32 = next(line for line in papers if line.startswith("| ds32 |"))
    assert "78.9 / 99.6 / 100.0" in ds32 and "66.1 / – / –" in ds32  # Tables 2 and 1
    assert f"| {100 * table['ds32']['top1']:.1f} / " in ds32 and "(60)" in ds32
    assert "| random-test | " in "\n".join(papers)
    assert s["plausibility"]["synthetic"]["n"] == 60
    rec = pd.read_csv(tmp_path / "parameter_recovery.csv")
    assert len(rec) == 60 and {"dw_true", "dw_best", "dw_topk_median"} <= set(rec.columns)
    # the identifiable quantities, their posterior intervals and whether each covered the truth
    assert {"rho_t_true", "rho_t_posterior_median", "rho_t_lo", "rho_t_hi"} <= set(rec.columns)
    inside = (rec.rho_t_lo <= rec.rho_t_true) & (rec.rho_t_true <= rec.rho_t_hi)
    assert (inside == rec.rho_t_covered).all()
    cov = s["interval_coverage"]
    assert cov["n"] == 60 and cov["posterior_k"] == len(db)  # 30 tumors < POSTERIOR_K
    assert cov["rho_t"] == pytest.approx(inside.mean())
    for key in ("seed_mm", "infiltration_mm", "rho_t"):
        assert 0 <= cov[key] <= 1
    # hotter posteriors are wider: coverage grows with the temperature
    sweep = s["interval_coverage_by_temperature"]
    temps = sorted(sweep, key=float)
    assert sweep[temps[-1]]["rho_t"] >= sweep[temps[0]]["rho_t"]


def test_queries_not_in_db_and_deterministic(db, queries):
    again = synthetic_queries(db, 5, seed=0)
    for a, b in zip(queries[:5], again, strict=True):
        assert np.array_equal(a.query.flair, b.query.flair)
    for q in queries[:10]:
        for i in range(len(db)):
            f, _ = db.masks(i)
            assert not np.array_equal(f, q.query.flair)


def test_resume_uses_cache(db, queries, tmp_path):
    evaluate(
        db, tmp_path, queries=queries[:5], strategies=["exact"], loop_check=0, log=lambda m: None
    )
    cached = sorted((tmp_path / "cache" / "exact").glob("*.json"))
    assert len(cached) == 5
    stamp = [p.stat().st_mtime_ns for p in cached]
    evaluate(
        db, tmp_path, queries=queries[:5], strategies=["exact"], loop_check=0, log=lambda m: None
    )
    assert [p.stat().st_mtime_ns for p in cached] == stamp


def _synthetic_cohort(db, tmp_path, n=2):
    """``n`` synthetic patients whose hidden tumors are database tumors 0..n-1."""
    atlas = db.atlas()
    return [
        make_patient(
            atlas,
            tmp_path / f"p{j}",
            density=db.density(j),
            theta={"dw": float(db.params.iloc[j].dw)},
            seed=j,
        )  # fmt: skip
        for j in range(n)
    ]


def test_real_cohort_of_synthetic_patients(db, tmp_path, monkeypatch):
    lines = ["patient_id,t1,seg,labels"]
    for j, p in enumerate(_synthetic_cohort(db, tmp_path)):
        lines.append(f"p{j},{p.t1},{p.seg},brats2021")
    csv = tmp_path / "cohort.csv"
    csv.write_text("\n".join(lines) + "\n")
    qs = real_queries(db, csv, tmp_path / "regcache", registration="affine")
    assert [q.kind for q in qs] == ["real", "real"]
    s = evaluate(
        db, tmp_path / "ev", queries=qs, strategies=["exact"], loop_check=0, log=lambda m: None
    )
    assert s["plausibility"]["real"]["n"] == 2
    # cached registration: a second pass does not register again ...
    import gliomatch.patient.pipeline as pipeline  # to_atlas calls register through it

    calls = []
    real_register = pipeline.register

    def counting(*a, **kw):
        calls.append(1)
        return real_register(*a, **kw)

    monkeypatch.setattr(pipeline, "register", counting)
    again = real_queries(db, csv, tmp_path / "regcache", registration="affine")
    assert calls == []
    assert all(np.array_equal(a.query.flair, b.query.flair) for a, b in zip(qs, again, strict=True))
    # ... but a patient whose files changed is registered again, never served stale masks
    seg = nib.load(tmp_path / "p0" / "seg.nii.gz")
    moved = np.roll(np.asarray(seg.dataobj), 2, axis=0)
    nib.save(nib.Nifti1Image(moved, seg.affine), tmp_path / "p0" / "seg.nii.gz")
    real_queries(db, csv, tmp_path / "regcache", registration="affine")
    assert calls == [1]


def test_bad_cohort_csv(db, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,t1\na,b.nii.gz\n")
    with pytest.raises(GliomatchError, match="patient_id"):
        real_queries(db, bad, tmp_path / "c")
    bad.write_text("patient_id,t1,seg\na,missing.nii.gz,also.nii.gz\n")
    with pytest.raises(GliomatchError, match="not found"):
        real_queries(db, bad, tmp_path / "c")
    with pytest.raises(GliomatchError, match="not found"):
        real_queries(db, tmp_path / "none.csv", tmp_path / "c")


def test_evaluate_cli(db, tmp_path):
    r = runner.invoke(
        app,
        [
            "evaluate",
            "--db",
            str(db.path),
            "--out",
            str(tmp_path / "o"),
            "--synthetic",
            "8",
            "--strategies",
            "exact,ds32",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output.strip().splitlines()[-1])
    assert {row["strategy"] for row in s["table"]} == {"exact", "ds32"}
    r = runner.invoke(
        app, ["evaluate", "--db", str(db.path), "--out", str(tmp_path / "o"), "--synthetic", "0"]
    )
    assert r.exit_code == 1 and "nothing to evaluate" in r.output
    r = runner.invoke(
        app,
        [
            "evaluate",
            "--db",
            str(db.path),
            "--out",
            str(tmp_path / "o"),
            "--synthetic",
            "3",
            "--strategies",
            "exact,nope",
        ],
    )
    assert r.exit_code == 1 and "unknown" in r.output


def test_real_cohort_empty_after_registration_names_the_patient(db, tmp_path, monkeypatch):
    """A patient whose warped FLAIR is empty stops the cohort with its id, not a bare error."""

    atlas = db.atlas()
    p = make_patient(atlas, tmp_path / "p0", density=db.density(0), seed=0)
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"patient_id,t1,seg,labels\nlost,{p.t1},{p.seg},brats2021\n")
    cache = tmp_path / "regcache"
    import gliomatch.patient.pipeline as pipeline  # to_atlas calls register through it

    empty = atlas.to_nifti(np.zeros(atlas.shape, np.uint8))  # a registration losing the tumor
    from gliomatch.patient.registration import Registration

    def lost(anatomy, *a, **kw):  # transforms that lose the tumor (their warp, below)
        return Registration([], [], [], "affine", 0.0, True, atlas=atlas, patient=anatomy)

    monkeypatch.setattr(pipeline, "register", lost)
    monkeypatch.setattr(pipeline, "warp_masks_to_atlas", lambda *a, **kw: (empty, empty))
    with pytest.raises(GliomatchError, match="patient lost: the tumor vanished"):
        real_queries(db, csv, cache, registration="affine")


def test_calibrate_then_evaluate_reports_calibrated_coverage(make_db, tmp_path):
    from gliomatch.evaluation.recovery import calibrate
    from gliomatch.patient.estimates import load_calibration

    db = make_db(30, seed=22)
    rec = calibrate(db, queries=24)
    assert rec["queries"] == 24 and (db.path / "calibration.json").is_file()
    assert load_calibration(db.path, db.fingerprint)[0] is not None
    qs = synthetic_queries(db, 30, seed=0)  # other held-out tumors than the calibration's
    s = evaluate(db, tmp_path, queries=qs, strategies=["exact"], loop_check=0, log=lambda m: None)
    cov = s["interval_coverage"]
    assert cov["calibrated"] is True
    # the calibrated intervals cover at least as often as the raw ones, here near the level
    for key in ("seed_mm", "infiltration_mm", "rho_t"):
        assert cov[key] >= cov["raw"][key]
        assert cov[key] >= 0.7
    with pytest.raises(GliomatchError, match="at least 20|>= 20"):
        calibrate(db, queries=5)


def test_real_cohort_with_followups_scores_the_plans(db, tmp_path):
    """A follow-up equal to the first scan's core is fully covered by the standard plan (core
    + 15 mm); a follow-up with only a cavity is no recurrence (coverage 1)."""
    lines = ["patient_id,t1,seg,labels,followup_seg,followup_labels"]
    for j, p in enumerate(_synthetic_cohort(db, tmp_path)):
        seg = nib.load(p.seg)
        lab = np.asarray(seg.dataobj)
        # the follow-up in PREDICT-GBM's labels: the old core as enhancing (3), or a cavity (4)
        fu = np.where(np.isin(lab, (1, 4)), 3 if j == 0 else 4, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(fu, seg.affine), tmp_path / f"fu{j}.nii.gz")
        lines.append(f"p{j},{p.t1},{p.seg},brats2021,{tmp_path / f'fu{j}.nii.gz'},predictgbm")
    csv = tmp_path / "cohort.csv"
    csv.write_text("\n".join(lines) + "\n")
    qs = real_queries(db, csv, tmp_path / "regcache", registration="affine")
    assert all(q.followup is not None for q in qs)
    s = evaluate(
        db, tmp_path / "ev", queries=qs, strategies=["exact"], loop_check=0, log=lambda m: None
    )
    rows = {r["patient_id"]: r for r in s["recurrence_coverage"]}
    assert rows["p0"]["status"] == "ok" and rows["p0"]["standard_enhancing"] > 0.95
    assert rows["p1"]["standard_enhancing"] == rows["p1"]["best_any"] == 1.0  # no recurrence
    for r in rows.values():
        assert all(0 <= r[f"{p}_{x}"] <= 1 for p in ("standard", "best", "ensemble")
                   for x in ("enhancing", "any"))  # fmt: skip
