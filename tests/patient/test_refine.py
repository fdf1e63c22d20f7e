"""The refinement in the patient's anatomy: working grid, tissue maps, the fit."""

import warnings

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel.affines import apply_affine

from gliomatch.errors import GliomatchError
from gliomatch.patient.inputs import PatientInputs, load_patient
from gliomatch.patient.pipeline import personalize
from gliomatch.patient.refine import dice_counts, dice_counts_reference, refine
from gliomatch.patient.registration import identity
from gliomatch.patient.tissue import patient_tissue, working_grid
from gliomatch.solver import get_model
from gliomatch.solver.domain import Domain


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(30, resolution=64, seed=5)


def _patient(db, *, shift_vox=(2, -2, 1), dw_factor=0.3, t_factor=1.2):
    """A tumor that is not in the database: a database trajectory's seed moved, its D_w and
    its time changed, simulated on the atlas grid (the patient lies on the atlas grid)."""
    atlas = db.atlas()
    row = db.params.iloc[int(np.argmax(db.params["t1gd_cm3"].to_numpy()))]
    shape = np.asarray(atlas.shape) - 1
    frac = np.clip(np.array([row["x"], row["y"], row["z"]]) + np.asarray(shift_vox) / shape, 0, 1)
    model = get_model()
    domain = model.domain_of(atlas)
    voxel = np.rint(frac * shape).astype(int)
    if not domain.tissue[tuple(voxel + 1)]:
        frac = np.array([row["x"], row["y"], row["z"]])
    sim = model.simulate(
        domain, tuple(frac), dw=row["dw"] * dw_factor, rho=row["rho"],
        times=[row["t_end"] * t_factor],
    )  # fmt: skip
    u = sim.densities[0]
    inputs = PatientInputs(
        atlas.to_nifti(atlas.t1.astype(np.float32)), "t1", u >= 0.2, (u >= 0.6) & (u >= 0.2),
        "masks",
    )  # fmt: skip
    return inputs, u


@pytest.fixture(scope="module")
def fitted(db):
    inputs, truth = _patient(db)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = personalize(inputs, db, registration="none", ensemble=True, k=5)
    return inputs, truth, res


def test_working_grid_covers_the_brain_on_any_axes():
    brain = np.zeros((40, 30, 20), bool)
    brain[5:35, 3:27, 2:18] = True
    rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # voxel axes turned in the world
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.2, 2.5])
    aff[:3, 3] = [10, -20, 5]
    shape, waff = working_grid(brain, aff, 1.5, 3.0)
    assert np.allclose(np.linalg.norm(waff[:3, :3], axis=0), 1.5)
    corners = np.argwhere(brain)[[0, -1]]
    inside = apply_affine(np.linalg.inv(waff), apply_affine(aff, corners))
    assert np.all(inside >= 0) and np.all(inside <= np.asarray(shape) - 1)
    with pytest.raises(GliomatchError, match="brain mask is empty"):
        working_grid(np.zeros((4, 4, 4), bool), aff)


def test_tissue_given_maps_and_the_tumor_rule(db):
    atlas = db.atlas()
    inputs, _ = _patient(db)
    wm, gm, csf = atlas.wm.copy(), atlas.gm.copy(), atlas.csf.copy()
    tumor = inputs.flair
    # the given maps call part of the tumor CSF: the rule makes it white matter
    hole = tumor & (np.cumsum(tumor.ravel()).reshape(tumor.shape) < tumor.sum() // 3)
    wm[hole], gm[hole], csf[hole] = 0.0, 0.0, 1.0
    given = PatientInputs(
        inputs.anatomy, "t1", inputs.flair, inputs.t1gd, "masks",
        tissue={"wm": wm, "gm": gm, "csf": csf},
    )  # fmt: skip
    reg = identity(inputs.anatomy, atlas)
    t = patient_tissue(given, atlas, reg, atlas.brain | tumor, spacing=atlas.spacing)
    assert t.source == "given" and t.tumor_voxels_made_tissue > 0
    assert np.all(t.wm[t.tumor] + t.gm[t.tumor] >= 0.5)  # every tumor voxel is tissue
    total = t.wm + t.gm + t.csf
    assert np.allclose(total[t.brain], 1.0, atol=1e-5) and np.all(total[~t.brain] == 0)
    mapped = patient_tissue(inputs, atlas, reg, atlas.brain | tumor, spacing=atlas.spacing)
    assert mapped.source == "atlas priors" and mapped.tumor_voxels_made_tissue == 0


def test_solver_fast_and_reference_agree_on_a_working_grid(db):
    # the refinement's grid: patient tissue resampled onto turned, cropped axes
    inputs, _ = _patient(db)
    atlas = db.atlas()
    t = patient_tissue(inputs, atlas, identity(inputs.anatomy, atlas), atlas.brain, spacing=4.5)
    domain = Domain.from_maps(t.wm, t.gm, t.spacing, affine=t.affine)
    seed = np.argwhere(domain.tissue[1:-1, 1:-1, 1:-1] & t.tumor)[0] / (np.asarray(t.shape) - 1)
    model = get_model()
    kw = dict(dw_over_rho=9.0, stages=[4.0, 9.0])
    fast = model.simulate_stages(domain, tuple(seed), **kw)
    ref = model.simulate_stages(domain, tuple(seed), method="reference", **kw)
    for a, b in zip(fast.densities, ref.densities, strict=True):
        assert np.abs(a - b).max() < 1e-5
    assert fast.densities[-1].max() > 0.5  # a tumor grew: the comparison is not of zeros


def test_refinement_fits_better_and_never_worse(fitted):
    inputs, truth, res = fitted
    r = res.parameters["refinement"]
    # a tumor not in a 30-tumor database: the fit in the patient's anatomy must improve
    assert r["score_after"] > r["score_before"] + 0.05, r
    for before, after in zip(r["members_before"], r["members_after"], strict=True):
        assert after["score"] >= before["score"]
        assert after["db_id"] == before["db_id"]
    # identifiable quantities only, in the patient's (scanner) millimetres
    assert set(r["best"]) >= {"seed_mm", "dw_over_rho_mm2", "rho_t", "infiltration_mm"}
    assert "dw" not in r["best"] and "rho" not in r["best"]
    # the refined density lies on the patient's grid, with its geometry, and the plans use it
    img = res.images["density_refined_patient"]
    assert img.shape == inputs.anatomy.shape and np.allclose(img.affine, inputs.anatomy.affine)
    assert "refined in the patient's anatomy" in res.plans["description"]
    assert "density_refined_ensemble_patient" in res.images
    assert res.summary()["refinement"]["score_after"] == r["score_after"]
    assert res.timing["refine_s"] > 0
    # the score it reports is the patient-space Dice of the refined density
    u = np.asarray(img.dataobj)
    dt = 2 * np.sum((u >= 0.6) & inputs.t1gd) / ((u >= 0.6).sum() + inputs.t1gd.sum())
    assert abs(dt - r["best"]["dice_t1gd"]) < 1e-3


def test_refinement_is_deterministic_and_can_be_turned_off(db, fitted):
    inputs, _, res = fitted
    atlas = db.atlas()
    reg = identity(inputs.anatomy, atlas)
    brain = res.plans["brain"]
    a = refine(inputs, db, atlas, reg, res.ids, brain, starts=1, evaluations=6, polish=2)
    b = refine(inputs, db, atlas, reg, res.ids, brain, starts=1, evaluations=6, polish=2)
    assert a.best.record() == b.best.record()
    assert np.array_equal(a.best.density, b.best.density)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = personalize(inputs, db, registration="none", refine=False, k=5)
    assert off.refinement is None and "density_refined_patient" not in off.images
    assert "refinement" not in off.parameters and off.summary()["refinement"] is None


def test_patient_tissue_maps_are_checked(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    data = np.zeros((10, 10, 10), np.float32)
    data[3:7, 3:7, 3:7] = 1
    for name, arr in (("wm", data), ("gm", 1 - data), ("bad", data * 3), ("seg", data * 2)):
        nib.save(nib.Nifti1Image(arr, aff), tmp_path / f"{name}.nii.gz")
    p = {n: tmp_path / f"{n}.nii.gz" for n in ("wm", "gm", "bad", "seg")}
    inp = load_patient(wm=p["wm"], gm=p["gm"], seg=p["seg"], labels="brats2021")
    assert set(inp.tissue) == {"wm", "gm"} and inp.tissue["gm"].max() == 1
    with pytest.raises(GliomatchError, match="need both wm and gm"):
        load_patient(t1=p["wm"], gm=p["gm"], seg=p["seg"])
    with pytest.raises(GliomatchError, match="not a probability map"):
        load_patient(wm=p["wm"], gm=p["bad"], seg=p["seg"], labels="brats2021")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(0.2, 0.6), (0.1, 0.7), (0.3, 0.3)]))
def test_fused_dice_counts_agree_with_the_numpy_reference(seed, levels):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 9, size=3))
    u = rng.random(shape).astype(np.float32)
    u[rng.random(shape) < 0.3] = levels[0]  # values exactly at a level count as inside
    view = np.pad(u, 1)[1:-1, 1:-1, 1:-1]  # a strided view, as the solver hands it over
    flair, t1gd = rng.random(shape) < 0.5, rng.random(shape) < 0.3
    assert dice_counts(view, flair, t1gd, *levels) == dice_counts_reference(u, flair, t1gd, *levels)


def test_plan_coverage_reuses_the_plan_personalize_made(fitted):
    # the benchmarks score every density's plan; the planned one is not made twice, and is
    # the same plan as made again from its density
    from gliomatch.evaluation.plans import plan_coverage
    from gliomatch.patient.plans import recurrence_coverage

    inputs, truth, res = fitted
    cov, _ = plan_coverage(res, {"any": truth >= 0.1})
    again = res.plans_from(res.images["density_refined_ensemble_patient"], "again")
    assert cov["refined_ensemble_any"] == recurrence_coverage(truth >= 0.1, again["personalized"])
    plans = ("standard", "best", "ensemble", "refined", "refined_ensemble")
    assert set(cov) == {f"{p}_any" for p in plans}
