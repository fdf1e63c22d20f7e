"""The registration quality study (gliomatch.evaluation.regstudy)."""

import nibabel as nib
import numpy as np
import pytest

from gliomatch.errors import GliomatchError
from gliomatch.evaluation.regstudy import FIGURES, bench_registration, inverted
from gliomatch.patient.registration import brain_support


def test_inverted_contrast_keeps_the_background():
    data = np.zeros((4, 4, 4), np.float32)
    data[1:3, 1:3, 1:3] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    out = np.asarray(inverted(nib.Nifti1Image(data, np.eye(4))).dataobj)
    assert (out[data == 0] == 0).all()
    # the brain support: all but the darkest voxel, which sits at the foreground's lowest
    # percentile, below the canonical brain level (gliomatch.intensity)
    inside = brain_support(data)
    assert inside.sum() == 7 and not inside[data == 1].any()
    assert (out[inside] > 0).all() and (out[~inside] == 0).all()
    assert np.corrcoef(out[inside], data[inside])[0, 1] == pytest.approx(-1)


def test_study_ranks_registrations(make_db):
    db = make_db(12, resolution=32, seed=5)
    res = bench_registration(db, patients=2)
    assert len(res["rows"]) == 2 * 2 * 3
    s = res["summary"]
    for f in FIGURES:
        assert -1 <= s[f]["spearman_with_true_dice"] <= 1
    for key in ("true_dice_flair", *FIGURES):
        assert set(s[key]) >= {f"mean_{c}_{k}" for c in ("t1", "inverted")
                               for k in ("syn", "affine", "none")}  # fmt: skip
    # the T1 correlation flips with the contrast; the brain Dice does not
    assert s["t1_correlation"]["mean_inverted_syn"] < 0 < s["t1_correlation"]["mean_t1_syn"]
    assert s["brain_dice"]["mean_inverted_none"] == pytest.approx(s["brain_dice"]["mean_t1_none"])
    with pytest.raises(GliomatchError, match="patients"):
        bench_registration(db, patients=1)
