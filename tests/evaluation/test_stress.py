"""The stress benchmark: switchable factors, a diffeomorphic anatomy, treatment, resumable."""

import json

import numpy as np
import pandas as pd
import pytest

from gliomatch.errors import GliomatchError
from gliomatch.evaluation import stress
from gliomatch.evaluation.stress import (
    FACTORS,
    SETTINGS,
    StressConfig,
    bench_stress,
    displacement_field,
    stress_patient,
    summarize_stress,
)

#: a short interval keeps the untreated recurrence below the size limit on a 32^3 grid
CFG = StressConfig(rms_mm=(4.0, 4.0), interval_days=(20.0, 20.0))


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(40, resolution=32, seed=12)


@pytest.fixture(scope="module")
def prior(db):
    """A prior draw that shows a core in the atlas: the database's slowest grower."""
    row = db.params.iloc[int(db.params["rho"].idxmin())]
    return {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}


def test_displacement_is_smooth_diffeomorphic_and_of_the_asked_size():
    rng = np.random.default_rng(0)
    d, figs = displacement_field((32, 32, 32), 6.0, 5.0, rng, sigma_mm=30.0)
    assert d.shape == (3, 32, 32, 32)
    assert figs["rms_mm"] == pytest.approx(5.0, rel=0.15)
    assert figs["min_jacobian"] > 0  # no folding
    again, _ = displacement_field((32, 32, 32), 6.0, 5.0, np.random.default_rng(0), sigma_mm=30.0)
    assert np.array_equal(d, again)


def test_factors_switch_and_draws_are_shared_between_settings(db, prior):
    atlas = db.atlas()
    pats = {}
    for s in SETTINGS:
        try:
            pats[s] = stress_patient(atlas, prior, 0, s, config=CFG)
        except GliomatchError as exc:  # e.g. a deformed anatomy leaves no visible core
            pytest.skip(str(exc))
    none = pats["none"].truth
    assert none["ratio"] == 10.0 and (none["flair_level"], none["t1gd_level"]) == (0.2, 0.6)
    assert not any(k.startswith(("anatomy_", "rim", "survival", "gamma")) for k in none)
    every = pats["all"].truth
    for key in ("anatomy_rms_mm", "ratio", "flair_level", "rim_mm", "survival", "gamma"):
        assert key in every
    # a factor draws the same in its own setting and in "all" (paired comparisons)
    assert pats["anatomy"].truth["anatomy_rms_mm"] == every["anatomy_rms_mm"]
    assert pats["model"].truth["ratio"] == every["ratio"] != 10.0
    assert 5.0 <= every["ratio"] <= 100.0
    assert pats["treatment"].truth["survival"] == every["survival"]
    # the patient is on the atlas grid with its own anatomy; the segmentation is checked
    p = pats["anatomy"]
    assert p.inputs.anatomy.shape == atlas.shape and p.inputs.t1gd.any()
    assert not np.array_equal(np.asarray(p.inputs.anatomy.dataobj) > 0, atlas.brain)
    # untreated, the recurrence contains the first scan's core (growth only); treated, the
    # resected core is empty of tumor
    assert pats["none"].recurrence["enhancing"][pats["none"].inputs.t1gd].all()
    assert not pats["treatment"].recurrence["any"][pats["treatment"].inputs.t1gd].any()
    # deterministic
    again = stress_patient(atlas, prior, 0, "all", config=CFG)
    assert again.truth == every
    assert np.array_equal(again.recurrence["enhancing"], pats["all"].recurrence["enhancing"])


def test_unknown_setting_is_refused(db, prior):
    with pytest.raises(GliomatchError, match="unknown stress setting"):
        stress_patient(db.atlas(), prior, 0, "weather")


def test_bench_runs_resumes_and_summarizes(db, tmp_path, monkeypatch):
    kw = dict(settings=["none", "all"], patients=2, combined=2, registration="none")
    res = bench_stress(db, tmp_path, **kw)
    for s in ("none", "all"):
        e = res["settings"][s]
        assert e["ok"] + e["failed"] == 2
        for rec in ("enhancing", "any"):
            # the refinement's plans are scored beside the atlas-only ones
            for plan in ("standard", "best", "ensemble", "refined", "refined_ensemble"):
                if e[rec]["n"]:
                    assert 0 <= e[rec][f"{plan}_mean"] <= 1
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert (rows["refine_score_after"].dropna() >= rows["refine_score_before"].dropna()).all()
    assert set(rows["setting"]) == {"none", "all"} and (tmp_path / "stress.png").is_file()
    ok = rows[rows["status"] == "ok"]
    assert (ok["plan_cm3"] > 0).all()

    # resumed: every patient comes from the cache, the same summary
    def boom(*a, **k):
        raise AssertionError("recomputed a cached patient")

    monkeypatch.setattr(stress, "_run_patient", boom)
    again = bench_stress(db, tmp_path, **kw)
    assert again["settings"] == res["settings"] and again["partial"] == []
    assert json.loads((tmp_path / "summary.json").read_text())["settings"] == res["settings"]
    # a run in progress, summarized as far as it got: nothing computed, the shortfall stated
    more = bench_stress(db, tmp_path, **{**kw, "patients": 5}, cached_only=True)
    assert more["settings"]["none"] == res["settings"]["none"] and more["partial"] == ["none"]


def test_summary_pairs_and_leaves_out_patients_without_that_recurrence():
    rows = []
    for j, (std, ens, n_enh) in enumerate([(0.5, 0.7, 3.0), (0.8, 0.6, 2.0), (1.0, 1.0, 0.0)]):
        rows.append(
            {"setting": "model", "patient": j, "status": "ok",
             "recurrence_enhancing_cm3": n_enh, "recurrence_any_cm3": 5.0,
             **{f"{p}_{r}": v for r in ("enhancing", "any")
                for p, v in (("standard", std), ("best", std), ("ensemble", ens))}}
        )  # fmt: skip
    rows.append({"setting": "model", "patient": 3, "status": "skipped: no visible core"})
    s = summarize_stress(pd.DataFrame(rows))["settings"]["model"]
    assert (s["ok"], s["skipped"], s["failed"]) == (3, 1, 0)
    e = s["enhancing"]
    assert e["n"] == 2  # patient 2 has no enhancing recurrence: not averaged as 100 %
    assert e["ensemble_minus_standard"] == pytest.approx(0.0)
    assert e["ensemble_minus_standard_se"] == pytest.approx(0.2)
    assert e["ensemble_at_least_standard"] == 0.5
    assert s["any"]["n"] == 3


def test_cli(db, tmp_path):
    from typer.testing import CliRunner

    from gliomatch.cli import app

    r = CliRunner().invoke(app, ["bench", "stress", "--db", str(db.path), "--out",
                                 str(tmp_path / "o"), "--settings", "model", "--patients", "1",
                                 "--registration", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| model |" in r.output and "refined ens. − std" in r.output
    r = CliRunner().invoke(app, ["bench", "stress", "--db", str(db.path), "--out",
                                 str(tmp_path / "q"), "--settings", "model", "--patients", "1",
                                 "--registration", "none", "--no-refine"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "ensemble − std" in r.output and "refined" not in r.output
    # a summary before any patient was computed says so (it was an IndexError)
    r = CliRunner().invoke(app, ["bench", "stress", "--db", str(db.path), "--out",
                                 str(tmp_path / "empty"), "--settings", "model", "--patients",
                                 "1", "--registration", "none", "--cached-only"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "no stressed patient computed yet" in r.output
    r = CliRunner().invoke(app, ["bench", "stress", "--db", str(db.path), "--out",
                                 str(tmp_path / "p"), "--settings", "weather"])  # fmt: skip
    assert r.exit_code != 0 and "unknown weather" in r.output
    assert set(FACTORS) < set(SETTINGS)


def test_edema_proxy_plans_from_the_core_alone(db, tmp_path):
    """The proxy hides the edema from the plans and scores each by the edema it covers; a
    synthetic BraTS case on the atlas grid (registration none)."""
    import nibabel as nib
    from typer.testing import CliRunner

    from gliomatch.cli import app
    from gliomatch.evaluation.proxy import edema_proxy

    atlas = db.atlas()
    flair, core = db.masks(
        int(np.argmax([m[0].sum() - m[1].sum() for m in map(db.masks, range(len(db)))]))
    )
    seg = np.where(core, 4, np.where(flair, 2, 0)).astype(np.uint8)
    case = tmp_path / "cases" / "C1"
    case.mkdir(parents=True)
    nib.save(nib.Nifti1Image((atlas.t1 * 1000).astype(np.float32), atlas.affine),
             str(case / "C1-t1n.nii.gz"))  # fmt: skip
    nib.save(nib.Nifti1Image(seg, atlas.affine), str(case / "C1-seg.nii.gz"))
    table, s = edema_proxy(tmp_path / "cases", db, tmp_path / "o", labels="brats2021",
                           registration="none")  # fmt: skip
    row = table.iloc[0]
    assert row["status"] == "ok", row["status"]
    assert row["edema_cm3"] == pytest.approx((flair & ~core).sum() * atlas.voxel_volume_cm3)
    for p in ("standard", "best", "ensemble", "refined", "refined_ensemble"):
        assert 0 <= row[f"{p}_edema"] <= 1
    assert s["ok"] == 1 and (tmp_path / "o" / "proxy.csv").is_file()
    r = CliRunner().invoke(app, ["bench", "edema-proxy", "--real", str(tmp_path / "cases"),
                                 "--db", str(db.path), "--out", str(tmp_path / "o"),
                                 "--labels", "brats2021", "--registration", "none"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| C1 |" in r.output and "edema hidden" in r.output and "refined" in r.output
