"""`gliomatch predict-gbm` on a folder fabricated in PREDICT-GBM's layout; the ensemble density."""

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to
from typer.testing import CliRunner

from gliomatch.cli import app
from gliomatch.errors import GliomatchError
from gliomatch.masks import dice
from gliomatch.patient.estimates import ensemble_density
from gliomatch.patient.predictgbm import find_patients, run_predict_gbm

runner = CliRunner()


@pytest.fixture(scope="module")
def db(make_db):
    return make_db(12, resolution=64, seed=4)


def _their_grid(atlas):
    """Their atlas space: another grid (finer voxels, shifted origin) over the same head."""
    aff = atlas.affine.copy()
    aff[:3, :3] *= 0.8
    aff[:3, 3] += 1.5
    shape = tuple(int(s * 1.25) for s in atlas.shape)
    return shape, aff


def fabricate(root, db, pid="00000", tumor=5):
    atlas = db.atlas()
    shape, aff = _their_grid(atlas)
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), aff)
    folder = root / f"Patient-{pid}"
    folder.mkdir(parents=True)
    for name, arr in (("wm", atlas.wm), ("gm", atlas.gm), ("csf", atlas.csf)):
        img = resample_from_to(atlas.to_nifti(arr.astype(np.float32)), ref, order=1)
        nib.save(img, str(folder / f"{pid}-{name}.nii.gz"))
    f, t = db.masks(tumor)
    lab = np.where(t, 3, np.where(f, 2, 0)).astype(np.float32)
    seg = resample_from_to(atlas.to_nifti(lab), ref, order=0)
    nib.save(nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.uint8), aff),
             str(folder / f"{pid}-tumorseg.nii.gz"))  # fmt: skip
    return folder, shape, aff


def test_predict_gbm_writes_the_density_on_the_input_grid(db, tmp_path):
    folder, shape, aff = fabricate(tmp_path / "in", db)
    r = runner.invoke(
        app, ["predict-gbm", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
              "--db", str(db.path)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = nib.load(tmp_path / "out" / "00000.nii.gz")
    u = np.asarray(out.dataobj)
    assert out.shape == shape and np.allclose(out.affine, aff)
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() <= 1
    seg = np.asarray(nib.load(folder / "00000-tumorseg.nii.gz").dataobj)
    # the hidden tumor is database tumor 5: found, and its density lands on the input's tumor
    assert dice(u >= 0.2, seg > 0) > 0.7
    assert (u > 0).sum() > (seg > 0).sum()  # continuous, beyond the visible tumor
    # refined on the patient's own gm/wm/csf maps, which PREDICT-GBM gives
    assert "refined on the given tissue" in r.output
    r = runner.invoke(
        app, ["predict-gbm", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "raw"),
              "--db", str(db.path), "--no-refine"],
    )  # fmt: skip
    assert r.exit_code == 0 and "refined" not in r.output
    raw = np.asarray(nib.load(tmp_path / "raw" / "00000.nii.gz").dataobj)
    assert raw.shape == shape and not np.array_equal(raw, u)


def test_predict_gbm_bad_folders(db, tmp_path):
    with pytest.raises(GliomatchError, match="no PREDICT-GBM patient"):
        find_patients(tmp_path)
    folder, _, _ = fabricate(tmp_path / "a", db)
    (folder / "00000-csf.nii.gz").unlink()
    with pytest.raises(GliomatchError, match="missing 00000-csf.nii.gz"):
        find_patients(tmp_path / "a")
    folder, _, _ = fabricate(tmp_path / "b", db, pid="p 1")
    with pytest.raises(GliomatchError, match="not a plain name"):
        find_patients(tmp_path / "b")
    folder, _, aff = fabricate(tmp_path / "c", db)
    nib.save(nib.Nifti1Image(np.zeros((9, 9, 9), np.float32), aff), str(folder / "00000-wm.nii.gz"))
    with pytest.raises(GliomatchError, match="another grid"):
        run_predict_gbm(tmp_path / "c", tmp_path / "o", db)
    folder, shape, aff = fabricate(tmp_path / "d", db)
    nib.save(
        nib.Nifti1Image(np.zeros(shape, np.uint8), aff), str(folder / "00000-brain_mask.nii.gz")
    )
    with pytest.raises(GliomatchError, match="brain mask .* empty"):
        run_predict_gbm(tmp_path / "d", tmp_path / "o", db)
    r = runner.invoke(app, ["predict-gbm", "--input", str(tmp_path / "nope"), "--output",
                            str(tmp_path / "o"), "--db", str(db.path)])  # fmt: skip
    assert r.exit_code != 0 and "no such folder" in r.output and "Traceback" not in r.output


def test_ensemble_density_is_the_weighted_mean(db):
    ids = [1, 2, 3]
    one, info = ensemble_density(db, ids, [2.0, 0.5, 0.4])  # one match dominates
    assert np.allclose(one, db.density(1), atol=1e-4) and info["members"] == 1
    mean, info = ensemble_density(db, ids, [1.0, 1.0, 1.0])  # equal scores: the plain mean
    expect = np.mean([db.density(i) for i in ids], axis=0)
    assert np.allclose(mean, expect, atol=1e-5) and info["effective_members"] == pytest.approx(3)
