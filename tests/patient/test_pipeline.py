"""End-to-end pipeline on 64^3 synthetic patients with a known transform."""

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.errors import GliomatchError
from gliomatch.patient.inputs import load_patient, masks_from_labels
from gliomatch.patient.pipeline import infer
from gliomatch.patient.registration import POOR_QUALITY
from gliomatch.patient.synthetic import make_patient
from gliomatch.search import dice

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "tcga-fg-6692"


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(40, resolution=64, seed=11)


@pytest.fixture(scope="module")
def patient(db, tmp_path_factory):
    """A synthetic patient whose hidden tumor is database tumor 7 (so it must be found)."""
    row = db.params.iloc[7]
    theta = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
    return make_patient(
        db.atlas(), tmp_path_factory.mktemp("pat"), density=db.density(7), theta=theta, seed=3
    )


@pytest.fixture(scope="module")
def result(db, patient, tmp_path_factory):
    inputs = load_patient(t1=patient.t1, seg=patient.seg, labels="brats2021")
    return infer(inputs, db, tmp_path_factory.mktemp("out"), k=5)


def test_recovers_hidden_tumor(result, patient):
    # the hidden tumor is in the database: registration + warps + exact search must find it
    assert result.matches[0]["id"] == 7
    q = result.quality_figures
    assert result.quality == q[q["measure"]] > POOR_QUALITY[q["measure"]], q
    assert q["t1_correlation"] > 0.7  # a T1 input: the contrast-dependent figure agrees
    pred = nib.load(result.files["density_patient"]).get_fdata()
    true = nib.load(patient.density_true).get_fdata()
    # 0.8: the masks cross two interpolations (patient->atlas labels, atlas->patient density)
    # on 3 mm voxels and carry boundary noise; a wrong match scores far lower (~0.3)
    assert dice(pred >= 0.2, true >= 0.2) > 0.8
    assert dice(pred >= 0.6, true >= 0.6) > 0.8


def test_refined_outputs_and_report(result, patient):
    # a registered patient (SyN): the tissue is the atlas' mapped back, the refined density
    # lies on the scan's grid, and the report shows the tissue and the fit
    out = result.out
    for name in ("density_refined_patient.nii.gz", "tissue_wm.nii.gz", "tissue.png",
                 "density_refined.png"):  # fmt: skip
        assert (out / name).is_file(), name
    d = nib.load(out / "density_refined_patient.nii.gz")
    p_img = nib.load(patient.t1)
    assert d.shape == p_img.shape and np.allclose(d.affine, p_img.affine)
    r = json.loads((out / "matches.json").read_text())["refinement"]
    assert r["tissue"]["source"] == "atlas priors" and r["score_after"] >= r["score_before"]
    html = (out / "report.html").read_text()
    assert "Refined in the patient's anatomy" in html and "tissue.png" in html
    assert f"{r['score_after']:.3f}" in html


def test_outputs(result, patient, db):
    out = result.out
    for name in (
        "density_patient.nii.gz",
        "density_atlas.nii.gz",
        "flair_atlas.nii.gz",
        "t1gd_atlas.nii.gz",
        "matches.json",
        "parameters.json",
        "report.html",
        "patient.png",
        "density.png",
        "atlas_match.png",
        "scores.png",
    ):
        assert (out / name).is_file(), name
    p_img = nib.load(patient.t1)
    d = nib.load(out / "density_patient.nii.gz")
    assert d.shape == p_img.shape and np.allclose(d.affine, p_img.affine)
    a = nib.load(out / "flair_atlas.nii.gz")
    assert a.shape == db.shape and np.allclose(a.affine, db.affine)
    assert list((out / "transforms").iterdir())
    m = json.loads((out / "matches.json").read_text())
    assert len(m["matches"]) == 5 and set(m["timing"]) >= {"register_s", "search_s"}
    p = json.loads((out / "parameters.json").read_text())
    ident = {"x_mm", "y_mm", "z_mm", "infiltration_mm", "rho_t", "dw_over_rho"}
    assert set(p["spread_over_top_k"]) == ident
    assert set(p["estimates"]) == {"seed_mm", "infiltration_mm", "rho_t", "dw_over_rho"}
    # the posterior is over the whole 40-tumor database (fewer than POSTERIOR_K)
    assert p["posterior_k"] == len(db) and p["given_age"] is None
    assert "does not determine D_w, rho and T_end" in p["not_identifiable"]
    assert "Which plan the benchmarks support" in (out / "report.html").read_text()
    assert "does not determine" in m["not_identifiable"]
    # a match's simulation parameters are labelled as such, never as an estimate
    assert set(m["matches"][0]) >= {"seed_mm", "identifiable", "simulated_with"}
    assert "theta" not in m["matches"][0]
    truth = db.params.iloc[7]
    for col in ("infiltration_mm", "rho_t"):
        lo, hi = p["estimates"][col]["interval"]
        assert lo <= truth[col] <= hi
    html = (out / "report.html").read_text()
    assert "What this scan determines" in html and "does not determine" in html
    # the plans: on the patient's grid, the personalized one exactly the standard's volume
    std = nib.load(out / "ctv_standard.nii.gz")
    per = nib.load(out / "ctv_personalized.nii.gz")
    assert std.shape == p_img.shape and np.allclose(per.affine, p_img.affine)
    s_arr, p_arr = np.asarray(std.dataobj) > 0, np.asarray(per.dataobj) > 0
    assert s_arr.sum() == p_arr.sum() > 0
    core = np.isin(np.asarray(nib.load(patient.seg).dataobj), (1, 4))
    assert s_arr[core].all()  # the standard plan holds the core
    figs = m["plans"]["figures"]
    assert figs["standard"]["volume_cm3"] == pytest.approx(figs["personalized"]["volume_cm3"])
    assert "Radiotherapy target volumes" in html and (out / "plans.png").is_file()


def test_ensemble_plan(db, patient, tmp_path):
    inputs = load_patient(t1=patient.t1, seg=patient.seg, labels="brats2021")
    res = infer(inputs, db, tmp_path / "o", k=5, report=False, ensemble=True, plan_level=0.3)
    assert res.parameters["ensemble"]["members"] >= 1
    # planned from the refined ensemble (the refinement is on by default); the atlas-only
    # ensemble is written beside it
    assert "density_ensemble_patient" in res.files
    ens = np.asarray(nib.load(res.files["density_refined_ensemble_patient"]).dataobj)
    per = np.asarray(nib.load(res.files["ctv_personalized"]).dataobj) > 0
    # the isodensity plan is u >= 0.3 clipped to the brain (nearly all of it lies inside)
    assert np.array_equal(per & (ens >= 0.3), per) and per.sum() >= 0.9 * (ens >= 0.3).sum()
    assert res.plans["description"].count("posterior mean") == 1


def test_parameter_summary_given_an_age(db):
    from gliomatch.patient.estimates import parameter_summary
    from gliomatch.search import Query, describe_matches, get_strategy

    truth = db.params.iloc[7]
    q = Query.from_masks(*db.masks(7), db.shape, affine=db.affine)
    strat = get_strategy("exact", db).ensure_ready()
    scores, ids = strat.search_one(q, len(db))
    rows = describe_matches(db, q, scores[:5], ids[:5])
    p = parameter_summary(db, q, strat, scores, ids, rows, age_days=float(truth.t_end))
    # the hidden tumor is found, so with its true age rho and D_w come out near the truth
    g = p["given_age"]
    assert g["rho"]["best"] == pytest.approx(truth.rho)
    assert g["dw"]["best"] == pytest.approx(truth.dw)
    lo, hi = g["rho"]["interval"]
    assert lo * (1 - 1e-9) <= truth.rho <= hi * (1 + 1e-9)
    # another strategy's scores are re-scored at full resolution: the same posterior
    ds = get_strategy("ds32", db).ensure_ready()
    s2, i2 = ds.search_one(q, len(db))
    p2 = parameter_summary(db, q, ds, s2, i2, rows, age_days=float(truth.t_end))
    assert p2["estimates"]["rho_t"]["median"] == pytest.approx(p["estimates"]["rho_t"]["median"])
    with pytest.raises(GliomatchError, match="age_days"):
        parameter_summary(db, q, strat, scores, ids, rows, age_days=-1.0)


def _label_map(values):
    lab = np.zeros((6, 6, 6), np.uint8)
    for v in values:
        lab[v, v % 6, 1] = v
    return lab


def _read(lab, f, t):
    return {int(v) for v in lab[f]}, {int(v) for v in lab[t]}


# (convention, labels present, FLAIR labels, T1Gd labels)
CONVENTIONS = [
    ("brats2013", {1, 2, 3, 4}, {1, 2, 3, 4}, {1, 3, 4}),
    ("brats2021", {1, 2, 4}, {1, 2, 4}, {1, 4}),
    ("brats2023", {1, 2, 3}, {1, 2, 3}, {1, 3}),
    ("brats2024", {1, 2, 3, 4}, {1, 2, 3}, {1, 3}),  # 4 = resection cavity, never tumor
    ("predictgbm", {1, 2, 3}, {1, 2, 3}, {1, 3}),
    ("gliodil", {1, 3, 4}, {1, 3, 4}, {1, 4}),  # 1 enhancing, 3 edema, 4 necrotic
]


@pytest.mark.parametrize("scheme, present, flair, core", CONVENTIONS)
def test_every_label_convention(scheme, present, flair, core):
    lab = _label_map(present)
    f, t, s = masks_from_labels(lab, scheme)
    assert s == scheme
    assert _read(lab, f, t) == (flair, core)


@pytest.mark.parametrize(
    "present, scheme",
    [({1, 2, 3}, "brats2023"), ({2, 3}, "brats2023"), ({2}, "brats2021"), ({1, 2}, "brats2021")],
)
def test_auto_picks_only_an_unambiguous_reading(present, scheme):
    assert masks_from_labels(_label_map(present))[2] == scheme


@pytest.mark.parametrize(
    "present, message",
    [
        ({1, 2, 4}, "brats2013 .*brats2021 .*brats2024"),  # 4: enhancing or cavity?
        ({1, 2, 3, 4}, "brats2013 .*brats2024"),
        ({1, 3, 4}, "brats2013 .*gliodil \\(4 = necrotic\\)"),  # 3: core or edema?
        ({1}, "binary mask.*--flair-mask"),
        ({5}, "fit no known convention"),
        (set(), "empty"),
    ],
)
def test_auto_refuses_and_lists_the_conventions_that_fit(present, message):
    with pytest.raises(GliomatchError, match=message):
        masks_from_labels(_label_map(present))


@pytest.mark.parametrize(
    "scheme, present, message",
    [
        ("brats2021", {1, 2, 3, 4}, "unexpected labels \\[3\\].*brats2013"),
        ("brats2023", {1, 2, 4}, "unexpected labels \\[4\\]"),
        ("brats2024", {4}, "never tumor"),
        ("brats1999", {1, 2}, "unknown label convention"),
    ],
)
def test_named_convention_refuses_labels_it_lacks(scheme, present, message):
    with pytest.raises(GliomatchError, match=message):
        masks_from_labels(_label_map(present), scheme)


def test_a_recurrence_of_the_enhancing_label_alone_is_read_by_its_convention():
    """A follow-up may hold one label: GliODIL's 1 is an enhancing recurrence (not a binary
    mask), PREDICT-GBM's 4 a cavity with no tumor."""
    from gliomatch.patient.inputs import recurrence_masks

    enh, anyt, _ = recurrence_masks(_label_map({1}), "gliodil")
    assert enh.any() and np.array_equal(enh, anyt)
    lab = _label_map({1, 3})
    enh, anyt, _ = recurrence_masks(lab, "gliodil")
    assert {int(v) for v in lab[enh]} == {1} and {int(v) for v in lab[anyt]} == {1, 3}
    enh, anyt, _ = recurrence_masks(_label_map({4}), "predictgbm")
    assert not enh.any() and not anyt.any()


def _save(arr, affine, path):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def test_bad_inputs_cli(patient, db, tmp_path):
    img = nib.load(patient.t1)
    seg = np.asarray(nib.load(patient.seg).dataobj)
    base = ["infer", "--db", str(db.path), "--out", str(tmp_path / "o")]
    cases = [
        (["--t1", str(tmp_path / "missing.nii.gz"), "--seg", str(patient.seg)], "not found"),
        (
            [
                "--t1",
                str(_save(np.zeros((4, 4, 4, 3), np.float32), img.affine, tmp_path / "4d.nii.gz")),
                "--seg",
                str(patient.seg),
            ],
            "3-D",
        ),
        (
            [
                "--t1",
                str(patient.t1),
                "--seg",
                str(_save(seg[:-2], img.affine, tmp_path / "small.nii.gz")),
            ],
            "another grid",
        ),
        (
            [
                "--t1",
                str(patient.t1),
                "--seg",
                str(_save(np.zeros_like(seg), img.affine, tmp_path / "empty.nii.gz")),
            ],
            "empty",
        ),
        (
            [
                "--t1",
                str(patient.t1),
                "--seg",
                str(
                    _save(
                        np.where(seg > 0, 7, 0).astype(np.uint8),
                        img.affine,
                        tmp_path / "lab7.nii.gz",
                    )
                ),
            ],
            "fit no known convention",
        ),
        (["--seg", str(patient.seg)], "exactly one anatomical"),
        (["--t1", str(patient.t1)], "--seg"),
    ]
    for args, message in cases:
        r = runner.invoke(app, [*base, *args])
        assert r.exit_code != 0, args
        assert message in r.output, (message, r.output)
        assert "Traceback" not in r.output


def test_header_noise_and_core_outside(patient, tmp_path):
    img = nib.load(patient.t1)
    seg = np.asarray(nib.load(patient.seg).dataobj)
    aff = img.affine.copy()
    aff[0, 3] += 0.01  # header noise
    flair = (seg > 0).astype(np.uint8)
    core = np.isin(seg, (1, 4)).astype(np.uint8)
    idx = np.argwhere(flair == 0)[0]
    core[tuple(idx)] = 1  # one core voxel outside the whole tumor
    fp = _save(flair, aff, tmp_path / "f.nii.gz")
    tp = _save(core, img.affine, tmp_path / "t.nii.gz")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        inp = load_patient(t1=patient.t1, flair_mask=fp, t1gd_mask=tp)
    text = " ".join(str(x.message) for x in w)
    assert "resampled" in text and "outside the FLAIR mask" in text
    assert np.all(inp.flair[inp.t1gd])


def test_infer_batch(db, patient, tmp_path):
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"patient_id,t1,seg,labels\np1,{patient.t1},{patient.seg},brats2021\n")
    args = [
        "infer-batch",
        str(csv),
        "--out",
        str(tmp_path / "b"),
        "--db",
        str(db.path),
        "--registration",
        "affine",
        "--k",
        "3",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert summary["refined_score"][0] >= summary["refined_score_before"][0]
    # the plans' columns: equal volumes, the standard CTV holds the core, the supported CTV
    from gliomatch.patient.cohort import PLAN_COLUMNS

    assert set(PLAN_COLUMNS) <= set(summary.columns)
    assert summary["standard_cm3"][0] == summary["personalized_cm3"][0] > 0
    assert summary["standard_covers_core"][0] == 1.0
    assert summary["supported_plan"][0] == "standard"
    r = runner.invoke(app, args)  # resumable: the finished patient is reused
    assert r.exit_code == 0 and "reused" in r.output
    # other refinement or plan settings make another result: not reused; --json prints it
    r = runner.invoke(app, [*args, "--no-refine", "--ensemble", "--margin", "10", "--json"])
    assert r.exit_code == 0 and "reused" not in r.output
    (row,) = json.loads(r.stdout)
    assert row["patient_id"] == "p1" and row["status"] == "ok"
    assert "refined_score" not in row and "refined_score" not in pd.read_csv(
        tmp_path / "b" / "summary.csv"
    )
    assert row["standard_cm3"] < summary["standard_cm3"][0]  # a 10 mm margin: a smaller CTV
    assert (summary["personalized_plan"][0], row["personalized_plan"]) == ("refined", "ensemble")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,t1\nx,a.nii.gz\n")
    r = runner.invoke(
        app, ["infer-batch", str(bad), "--out", str(tmp_path / "c"), "--db", str(db.path)]
    )
    assert r.exit_code == 1 and "patient_id" in r.output
    bad.write_text(f"patient_id,t1,seg\np1,{patient.t1},nowhere.nii.gz\n")
    r = runner.invoke(
        app, ["infer-batch", str(bad), "--out", str(tmp_path / "c"), "--db", str(db.path)]
    )
    assert r.exit_code == 1 and "not found" in r.output


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/tcga-fg-6692 not present")
def test_real_clinical_scan_registers(atlas64, tmp_path):
    """Raw, skull-on, 5.5 mm-slice clinical T1 registers without crashing."""
    from gliomatch.patient.inputs import load_nifti
    from gliomatch.patient.registration import register, warp_to_atlas

    img = load_nifti(SHARED / "t1.nii.gz", "T1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its quality may well be flagged as poor
        reg = register(img, atlas64, kind="affine", workdir=tmp_path)
    assert not reg.skull_stripped  # a head scan, skull on
    assert np.isfinite(reg.quality)
    warped = warp_to_atlas(img, atlas64, reg)
    assert np.allclose(warped.affine, atlas64.affine) and warped.shape == atlas64.shape
    warped = warped.get_fdata()
    # the scan's brain lands on the atlas brain
    inside = warped[atlas64.brain].mean()
    outside = warped[~atlas64.brain].mean()
    assert inside > 1.5 * outside


def test_two_scans_end_to_end(db, patient, tmp_path):
    """A follow-up of the hidden tumor (its own trajectory, one e-folding time later) on the
    same patient grid: infer estimates rho, D_w and the age from both scans."""
    from gliomatch.database.config import BuildConfig
    from gliomatch.database.trajectories import space
    from gliomatch.solver import simulate

    row = db.params.iloc[7]
    cfg = BuildConfig.from_dict(db.manifest["build_config"])
    _, domain, _ = space(cfg.atlas, cfg.resolution, cfg.ratio)
    days = 1.0 / row.rho
    u2 = simulate(
        domain, row.x, row.y, row.z, row.dw_over_rho, 1.0, [row.rho * (row.t_end + days)]
    ).densities[0]
    theta = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
    later = make_patient(db.atlas(), tmp_path / "later", density=u2, theta=theta, seed=3)
    assert nib.load(later.seg).shape == nib.load(patient.seg).shape
    inputs = load_patient(
        t1=patient.t1, seg=patient.seg, labels="brats2021", followup_seg=later.seg
    )
    res = infer(inputs, db, tmp_path / "out", k=5, interval_days=days, report=False,
                refine=False)  # two-scan inference is the subject here  # fmt: skip
    best = res.parameters["two_scan"]["best"]
    assert best["traj_id"] == int(row.traj_id)
    # registration and two warps blur both scans: rho to within 30 %
    assert best["rho"] == pytest.approx(row.rho, rel=0.3)
    assert best["dw"] == pytest.approx(row.dw, rel=0.3)
    assert (tmp_path / "out" / "density_followup_patient.nii.gz").is_file()
    # one without the other is refused before any work
    with pytest.raises(GliomatchError, match="both a follow-up segmentation .* and interval_days"):
        infer(inputs, db, tmp_path / "o2", interval_days=None)
    other = nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    nib.save(other, tmp_path / "small.nii.gz")
    with pytest.raises(GliomatchError, match="another grid"):
        load_patient(
            t1=patient.t1,
            seg=patient.seg,
            labels="brats2021",
            followup_seg=tmp_path / "small.nii.gz",
        )


def test_quality_figures_do_not_depend_on_the_contrast(atlas32):
    from gliomatch.patient.registration import correlation_ratio, registration_quality

    t1 = atlas32.t1
    good = registration_quality(t1, t1, atlas32, brain_atlas=atlas32.brain)
    inverted = registration_quality(2.0 - 3.0 * t1, t1, atlas32, brain_atlas=atlas32.brain)
    assert good["measure"] == "brain_dice" and good["brain_dice"] == pytest.approx(1.0)
    # an inverted (T2-like) contrast: the T1 correlation flips, the other figures do not
    assert inverted["t1_correlation"] == pytest.approx(-good["t1_correlation"])
    assert inverted["tissue_eta"] == pytest.approx(good["tissue_eta"])
    assert inverted["brain_dice"] == pytest.approx(good["brain_dice"])
    # a misaligned scan scores lower on both contrast-free figures
    shifted = np.roll(t1, 3, axis=0)
    bad = registration_quality(shifted, t1, atlas32, brain_atlas=np.roll(atlas32.brain, 3, axis=0))
    assert bad["brain_dice"] < good["brain_dice"] - 0.05
    assert bad["tissue_eta"] < good["tissue_eta"] - 0.05
    assert correlation_ratio(np.ones(10), np.arange(10) % 2) == 0.0


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (["--margin", "0"], "--margin must be a positive"),
        (["--plan-volume", "-3"], "--plan-volume must be positive"),
        (["--plan-level", "2"], "--plan-level must lie in"),
        (["--gtv", "gtv"], "--gtv must be one of core, whole, none"),
        (["--min-margin", "-1"], "--min-margin must be >= 0 mm"),
        (["--gtv", "none", "--min-margin", "2"], "--min-margin grows the GTV"),
        (["--plan-volume", "5", "--plan-level", "0.3"], "either --plan-volume or --plan-level"),
    ],
)
def test_bad_plan_options_of_infer(patient, db, tmp_path, opts, message):
    r = runner.invoke(
        app,
        ["infer", "--db", str(db.path), "--out", str(tmp_path / "o"), "--t1", str(patient.t1),
         "--seg", str(patient.seg), "--labels", "brats2021", "--registration", "affine", *opts],
    )  # fmt: skip
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_binary_masks_warp_as_generic_label_does(db, patient, tmp_path):
    """The fast path (linear, > 0.5) against ANTs' generic-label interpolation, both ways."""
    import ants

    from gliomatch.patient.registration import register, to_ants, warp_to_atlas, warp_to_patient

    inputs = load_patient(t1=patient.t1, seg=patient.seg, labels="brats2021")
    atlas = db.atlas()
    reg = register(inputs.anatomy, atlas, tumor=inputs.flair, workdir=tmp_path / "t")
    mask = nib.Nifti1Image(inputs.flair.astype(np.float32), inputs.anatomy.affine)
    fast = warp_to_atlas(mask, atlas, reg, label=True).get_fdata()
    ref = ants.apply_transforms(
        fixed=to_ants(atlas.to_nifti(np.zeros(atlas.shape, np.float32))), moving=to_ants(mask),
        transformlist=reg.forward, interpolator="genericLabel",
    ).numpy()  # fmt: skip
    assert fast.sum() > 100 and np.array_equal(fast > 0.5, ref > 0.5)
    brain = atlas.to_nifti(atlas.brain.astype(np.float32))
    back = warp_to_patient(brain, atlas, inputs.anatomy, reg, label=True).get_fdata()
    ref = ants.apply_transforms(
        fixed=to_ants(inputs.anatomy), moving=to_ants(brain), transformlist=reg.inverse,
        whichtoinvert=reg.inverse_invert, interpolator="genericLabel",
    ).numpy()  # fmt: skip
    assert np.array_equal(back > 0.5, ref > 0.5)


def test_personalize_computes_and_write_outputs_writes(db, patient, tmp_path):
    """personalize() returns everything in memory (only the transforms, which ANTs keeps in
    files, land in its workdir); write_outputs() makes infer's files from it."""
    from gliomatch.patient.pipeline import personalize
    from gliomatch.patient.writers import write_outputs

    inputs = load_patient(t1=patient.t1, seg=patient.seg, labels="brats2021")
    res = personalize(inputs, db, k=3, registration="affine", workdir=tmp_path / "transforms")
    assert [p.name for p in tmp_path.iterdir()] == ["transforms"]
    grid = nib.load(patient.t1)
    for name in ("density_patient", "ctv_standard", "ctv_personalized"):
        assert res.images[name].shape == grid.shape and np.allclose(res.images[name].affine,
                                                                    grid.affine)  # fmt: skip
    assert res.images["density_atlas"].shape == db.shape
    assert res.best_id == res.matches[0]["id"] == int(res.ids[0]) and len(res.matches) == 3
    assert res.plans["figures"]["standard"]["volume_cm3"] > 0
    # a personalized plan that leaves out visible tumor is a warning (report, JSON, CLI)
    fig = res.plans["figures"]["personalized"]
    assert fig["covers_core"] == 1.0  # by default the personalized CTV contains the core
    assert "contains the tumor core" in res.plans["description"]
    assert not any("leaves out" in w for w in res.warnings)
    assert any(w.startswith("small database") for w in res.warnings)  # 40 tumors
    top_v = res.plans_from(res.images["density_patient"], "best match", contain="none")
    assert "may leave out visible tumor" in top_v["description"]
    files = write_outputs(res, tmp_path / "out", report=False)
    summary = json.loads(Path(files["matches"]).read_text())
    assert summary["matches"] == res.matches and summary["timing"]["total_s"] > 0
    assert summary["plans"]["figures"] == res.plans["figures"]
    assert summary["plans"]["evidence"]["supported_plan"] == "standard"  # no stress figure yet
    assert summary["warnings"] == res.warnings
    written = np.asarray(nib.load(files["ctv_personalized"]).dataobj)
    assert np.array_equal(written, np.asarray(res.images["ctv_personalized"].dataobj))


def test_registration_owns_its_spaces_and_outputs_keep_the_header(db, patient, tmp_path):
    """reg.to_atlas / reg.to_patient take and return images on the other grid; what lands on
    the patient's grid keeps the scan's header (description, codes) with its own data type."""
    from gliomatch.patient.registration import register

    src = nib.load(patient.t1)
    header = src.header.copy()
    header["descrip"] = b"patient 42, scanner X"
    header.set_qform(src.affine, code=1)
    header.set_sform(src.affine, code=4)
    t1 = nib.Nifti1Image(np.asarray(src.dataobj), src.affine, header=header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = register(t1, db.atlas(), kind="affine", workdir=tmp_path)
    atlas_img = reg.to_atlas(t1)
    assert atlas_img.shape == db.shape and np.allclose(atlas_img.affine, db.affine)
    back = reg.to_patient(db.atlas().to_nifti(db.density(7)))
    assert back.shape == t1.shape and np.allclose(back.affine, t1.affine)
    assert back.header["descrip"] == b"patient 42, scanner X"
    assert int(back.header["sform_code"]) == 4 and back.get_data_dtype() == np.float32
    mask = reg.patient_image(np.asarray(src.dataobj) > 0)
    assert mask.get_data_dtype() == np.uint8 and mask.header["descrip"] == header["descrip"]
    with pytest.raises(GliomatchError, match="not on the patient's grid"):
        reg.patient_image(np.zeros((3, 3, 3)))
    with pytest.raises(GliomatchError, match="another grid"):
        reg.to_patient(t1)  # a patient-space image is not on the atlas grid


def test_registration_none_for_patients_on_the_atlas_grid(db, tmp_path):
    """The atlas-space benchmarks (bench plans, evaluate --real's plans) run personalize with
    registration "none": the warps are the identity, the plans those of atlas space."""
    from gliomatch.patient.inputs import PatientInputs
    from gliomatch.patient.pipeline import personalize
    from gliomatch.patient.plans import standard_ctv

    atlas = db.atlas()
    f, t = db.masks(7)
    inputs = PatientInputs(atlas.to_nifti(atlas.t1.astype(np.float32)), "t1", f, t, "masks")
    res = personalize(inputs, db, k=3, registration="none", ensemble=True)
    assert res.best_id == 7 and res.registration.kind == "none"
    # the image the plans name (which the viewer shows) is the density they were made from
    assert res.plans["density_image"] == "density_refined_ensemble_patient"
    named = res.images[res.plans["density_image"]].get_fdata(dtype=np.float32)
    assert np.array_equal(named, res.plans["density"])
    assert np.array_equal(res.images["density_patient"].get_fdata(), db.density(7))
    zooms = np.full(3, atlas.spacing)
    assert np.array_equal(res.plans["standard"], standard_ctv(t, atlas.brain | f, zooms))
    best = res.plans_from(res.images["density_patient"], "best match")["personalized"]
    assert best.sum() == res.plans["standard"].sum() == res.plans["personalized"].sum()
    moved = nib.Nifti1Image(atlas.t1[1:].astype(np.float32), atlas.affine)  # not the grid
    with pytest.raises(GliomatchError, match="registration 'none'"):
        personalize(PatientInputs(moved, "t1", f[1:], t[1:], "masks"), db, registration="none")


def test_registration_resample_for_patients_in_the_atlas_frame_on_another_grid(db):
    """A patient in the atlas' world frame on a finer grid (96^3 against the database's 64^3):
    registration "resample" crosses the grids by their affines, finds the hidden tumor, and
    makes the plans on the patient's grid; a grid outside the atlas' frame is refused."""
    from nibabel.affines import rescale_affine
    from nibabel.processing import resample_from_to

    from gliomatch.patient.inputs import PatientInputs
    from gliomatch.patient.pipeline import personalize

    atlas = db.atlas()
    fine = (96, 96, 96)
    aff = rescale_affine(atlas.affine, atlas.shape, atlas.spacing * 64 / 96, fine)
    ref = (fine, aff)

    def onto(a, order=1):
        return np.asarray(
            resample_from_to(atlas.to_nifti(np.asarray(a, np.float32)), ref, order=order).dataobj
        )

    f, t = (onto(m) > 0.5 for m in db.masks(7))
    inputs = PatientInputs(nib.Nifti1Image(onto(atlas.t1), aff), "t1", f, t & f, "masks")
    res = personalize(inputs, db, k=3, registration="resample", refine=False)
    assert res.best_id == 7 and res.registration.kind == "resample"
    dens = res.images["density_patient"]
    assert dens.shape == fine and np.allclose(dens.affine, aff)
    assert np.allclose(dens.get_fdata(), onto(db.density(7)), atol=1e-5)
    assert res.plans["personalized"].shape == fine
    assert res.plans["personalized"].sum() == res.plans["standard"].sum()
    away = aff.copy()
    away[:3, 3] += 1000.0  # a grid a metre away holds none of the atlas' brain
    with pytest.raises(GliomatchError, match="one of syn, affine, none, resample, got 'warp'"):
        personalize(inputs, db, registration="warp")
    with pytest.raises(GliomatchError, match="atlas' world frame"):
        personalize(
            PatientInputs(nib.Nifti1Image(onto(atlas.t1), away), "t1", f, t & f, "masks"),
            db, registration="resample",
        )  # fmt: skip


def test_a_plan_leaving_out_visible_tumor_is_a_warning():
    from gliomatch.patient.pipeline import _plan_doubts

    assert _plan_doubts({"covers_core": 1.0, "covers_whole_tumor": 1.0}, 1000) == []
    (note,) = _plan_doubts({"covers_core": 0.781, "covers_whole_tumor": 0.629}, 1000)
    assert "leaves out 21.9 % of the visible tumor core and 37.1 % of the whole tumor" in note
    # a small database: why (its size) and what to do
    assert "with 1,000 tumors" in note and "gliomatch db build --n 50000" in note
    (note,) = _plan_doubts({"covers_core": 0.781, "covers_whole_tumor": 0.629}, 50_000)
    assert "db build" not in note
    (note,) = _plan_doubts({"covers_core": 0.99999, "covers_whole_tumor": 1.0}, 50_000)
    assert "leaves out < 0.1 % of the visible tumor core and 0.0 % of the whole" in note
    # the GTV rule holds the core: a doubt only where it holds less of the whole tumor than
    # the standard CTV does
    std = {"covers_core": 1.0, "covers_whole_tumor": 0.95}
    assert _plan_doubts({"covers_core": 1.0, "covers_whole_tumor": 0.945}, 50_000, std) == []
    (note,) = _plan_doubts({"covers_core": 1.0, "covers_whole_tumor": 0.80}, 50_000, std)
    assert "holds 80.0 % of the visible whole tumor, the standard CTV 95.0 %" in note


def test_every_doubt_about_a_result_is_a_warning():
    """A poor match, a small database, uncalibrated intervals, a poor registration: each a
    warning (the CLI, the report and matches.json show the result's warnings)."""
    from types import SimpleNamespace

    from gliomatch.patient.pipeline import POOR_MATCH, _result_doubts

    good = SimpleNamespace(quality_figures={"measure": "brain_dice", "brain_dice": 0.97})
    assert _result_doubts(1.3, 50_000, {"calibrated": True}, good) == []
    poor = SimpleNamespace(quality_figures={"measure": "brain_dice", "brain_dice": 0.80})
    notes = _result_doubts(POOR_MATCH - 0.01, 1_000, {"calibrated": False}, poor)
    assert len(notes) == 4
    assert notes[0].startswith("poor match: the best match scores 0.79")
    assert notes[1].startswith("small database: 1,000 tumors")
    assert "not calibrated" in notes[2] and "gliomatch db calibrate" in notes[2]
    assert notes[3].startswith("registration quality is poor (brain_dice 0.800")
    unregistered = SimpleNamespace(quality_figures={"measure": "none", "none": None})
    assert _result_doubts(1.3, 50_000, {"calibrated": True}, unregistered) == []


def test_the_plan_the_benchmarks_support_is_stated(monkeypatch):
    """Until a stress benchmark shows the personalized CTV matching the margin at this size,
    the standard CTV is the supported one, with the figures."""
    from gliomatch.patient import evidence

    e = evidence.plan_evidence(1000)
    assert e["supported_plan"] == "standard" and e["circular"]["n_db"] == 1000
    assert "-1.8 ± 1.0 points" in e["text"] and "+5.5 ± 0.4" in e["text"]
    assert "no run of this CTV yet with 1,000 tumors or fewer" in e["text"]
    assert e["personalized_plan"] == "refined" and "refined CTV" in e["text"]
    stress = ({"plan": "refined", "n_db": 5000, "diff": -3.0, "se": 1.0, "patients": 100},
              {"plan": "refined", "n_db": 50000, "diff": 0.4, "se": 0.5, "patients": 100},
              {"plan": "ensemble", "n_db": 50000, "diff": -2.0, "se": 0.5, "patients": 100},
              {"plan": "refined", "n_db": 80000, "diff": 9.0, "se": 4.0,
               "patients": 10})  # fmt: skip
    stress = tuple({**e, "grid": 128} for e in stress)
    monkeypatch.setattr(evidence, "STRESS", stress)
    # each kind of CTV is judged by its own figure
    assert evidence.plan_evidence(60_000, "ensemble")["supported_plan"] == "standard"
    assert "no run of this CTV" in evidence.plan_evidence(60_000, "best")["text"]
    with pytest.raises(ValueError, match="unknown plan kind"):
        evidence.plan_evidence(60_000, "margin")
    assert evidence.plan_evidence(20_000)["supported_plan"] == "standard"  # the 5,000 figure
    assert "-3.0 ± 1.0 points" in evidence.plan_evidence(20_000)["text"]
    assert evidence.plan_evidence(60_000)["supported_plan"] == "personalized"
    small = evidence.plan_evidence(90_000)  # 10 patients: stated, decides nothing
    assert small["supported_plan"] == "standard" and "not yet decisive" in small["text"]
    assert evidence.plan_evidence(100)["circular"] is None
    # a database on another grid is judged by the figures of its grid only
    coarse = evidence.plan_evidence(60_000, grid=64)
    assert coarse["circular"]["n_db"] == 10_000 and coarse["circular"]["grid"] == 64
    assert coarse["supported_plan"] == "standard" and coarse["stress"] is None
    assert "no run of this CTV yet with 60,000 tumors or fewer on a 64³ grid" in coarse["text"]
    assert "at 10,000 tumors on a 64³ grid (200 patients)" in coarse["text"]
    assert evidence.plan_evidence(60_000)["circular"]["grid"] == 128


def test_the_report_orients_explains_and_names_its_sources(result, patient, db):
    """Provenance (database, version, inputs with checksums, command line), the convention,
    the interactive view linked; the same density in the density and plan panels."""
    from gliomatch.files import sha256_file

    page = Path(result.files["report"]).read_text()
    assert "neurological convention" in page and 'href="viewer.html"' in page
    assert "<h2>Provenance</h2>" in page and db.fingerprint in page
    assert sha256_file(Path(patient.t1)) in page and sha256_file(Path(patient.seg)) in page
    summary = json.loads(Path(result.files["matches"]).read_text())
    prov = summary["provenance"]
    assert prov["database"]["tumors"] == len(db) and prov["database"]["calibrated"] is False
    assert set(prov["inputs"]) == {"t1", "seg"} and prov["labels"] == "brats2021"
    assert prov["gliomatch_version"] and prov["date"] and prov["command_line"]
    assert Path(result.files["viewer"]).is_file()


def test_report_panels_turn_every_scan_to_one_convention():
    """A scan stored LPS (BraTS) and the same scan stored RAS show the same panels."""
    from gliomatch.patient.report import _canonical

    rng = np.random.default_rng(0)
    ras = rng.random((6, 7, 5))
    aff = np.diag([2.0, 1.0, 3.0, 1.0])
    lps = ras[::-1, ::-1, :]
    aff_lps = aff.copy()
    aff_lps[:3, 0] *= -1
    aff_lps[:3, 1] *= -1
    aff_lps[:3, 3] = aff[:3, :3] @ [5, 6, 0]  # voxel (0, 0, 0) of the flipped array
    a, fa = _canonical(ras, aff)
    b, fb = _canonical(lps, aff_lps)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fa, fb)


def test_the_interactive_view_renders_in_headless_chromium(result, tmp_path):
    """viewer.html (NiiVue inlined, the volumes inlined) draws every layer in headless
    Chromium from a file, with no network: the page marks itself rendered."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; `make browser`)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", "--virtual-time-budget=30000"]  # fmt: skip
    url = Path(result.files["viewer"]).resolve().as_uri()
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout  # fmt: skip
    body = dom[dom.find("<body") : dom.find(">", dom.find("<body"))]
    assert 'data-rendered="ok"' in body, body[:300]
    assert 'data-volumes="5"' in body  # scan, density, core, both CTVs
    shot = tmp_path / "view.png"
    subprocess.run([chromium, *flags, "--window-size=900,700", f"--screenshot={shot}", url],
                   capture_output=True, timeout=180)  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert (pixels.max(axis=2) > 0.3).mean() > 0.02  # the slices are drawn, not a black page
    # the report itself, in the same browser: its provenance and its oriented figures
    page = Path(result.files["report"]).resolve()
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=180).stdout  # fmt: skip
    assert "<h2>Provenance</h2>" in dom and "neurological convention" in dom
    for png in ("patient.png", "density.png", "plans.png", "atlas_match.png"):
        assert f'src="{png}"' in dom and (page.parent / png).is_file()


def test_every_panel_has_orientation_letters_positions_in_mm_and_a_legend(monkeypatch, tmp_path):
    """The letters of each plane, the slice's position in mm, a colorbar for a density and a
    legend of only the masks present (no core entry for a tumor without one)."""
    import matplotlib.pyplot as plt

    from gliomatch.patient import report

    figs = []
    monkeypatch.setattr(report.plt, "close", lambda fig: figs.append(fig))
    scan = np.random.default_rng(0).random((20, 22, 18)).astype(np.float32)
    whole = np.zeros(scan.shape, bool)
    whole[8:12, 9:13, 7:11] = True
    aff = np.diag([-1.5, -1.5, 2.0, 1.0])  # stored LPS
    report._three_planes(tmp_path / "p.png", scan, aff, whole,
                         [(whole, "blue", "solid", "whole tumor"),
                          (np.zeros_like(whole), "red", "solid", "tumor core")],
                         density=scan, title="t")  # fmt: skip
    (fig,) = figs
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(",")[0] for ax in panels] == ["sagittal", "coronal", "axial"]
    assert all(ax.get_title().endswith(" mm") for ax in panels)
    letters = [{t.get_text() for t in ax.texts} for ax in panels]
    assert letters == [{"P", "A", "I", "S"}, {"L", "R", "I", "S"}, {"L", "R", "P", "A"}]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["whole tumor"]
    assert len(fig.axes) == 4  # three panels and the density's colorbar
    assert "neurological convention" in fig._suptitle.get_text()
    plt.close(fig)
