"""Do the registration quality figures mean something? (``gliomatch bench registration``)

Synthetic patients (:func:`gliomatch.patient.synthetic.make_patient`) carry a database tumor
under a known random deformation, so the true atlas-space tumor is known. Each patient is
registered in two contrasts (its T1, and the same scan with the intensities inverted inside
the brain: a T2-like contrast) and three ways (SyN, affine only, and none: the scan resampled
to the atlas grid as it lies). For each, the true accuracy (Dice of the warped whole-tumor mask
with the true one) is set beside every quality figure. A figure means something when it ranks
the registrations like the true accuracy does, in both contrasts.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy.stats import spearmanr

from gliomatch.errors import GliomatchError
from gliomatch.masks import dice
from gliomatch.patient.inputs import load_patient
from gliomatch.patient.registration import (
    brain_support,
    register,
    registration_quality,
    warp_masks_to_atlas,
)
from gliomatch.patient.synthetic import make_patient
from gliomatch.progress import report

__all__ = ["FIGURES", "bench_registration", "inverted"]

FIGURES = ("brain_dice", "tissue_eta", "t1_correlation")


def inverted(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The scan with its intensities inverted inside its brain (a T2-like contrast: bright
    fluid, dark white matter); outside stays 0, as in a skull-stripped scan."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    inside = brain_support(data)
    out = np.where(inside, 1.2 * float(data.max()) - data, 0).astype(np.float32)
    return nib.Nifti1Image(out, img.affine)


def _unregistered(anatomy, flair, atlas):
    """Figures and true accuracy of no registration: the scan resampled onto the atlas grid."""
    ref = atlas.to_nifti(np.zeros(atlas.shape, np.float32))
    warped = np.asarray(resample_from_to(anatomy, ref, order=1).dataobj)
    f = nib.Nifti1Image(flair.astype(np.float32), anatomy.affine)
    f_atlas = np.asarray(resample_from_to(f, ref, order=0).dataobj) > 0.5
    support = nib.Nifti1Image(
        brain_support(np.asarray(anatomy.dataobj)).astype(np.float32), anatomy.affine
    )
    brain = np.asarray(resample_from_to(support, ref, order=0).dataobj) > 0.5
    return registration_quality(warped, atlas.t1, atlas, f_atlas, brain_atlas=brain), f_atlas


def bench_registration(db, *, patients: int = 4, seed: int = 0, progress=None) -> dict:
    """Rows (patient, contrast, registration, true Dice, every quality figure, seconds) and,
    per figure, its Spearman correlation with the true accuracy over all rows."""
    if patients < 2:
        raise GliomatchError(f"patients must be >= 2, got {patients}")
    atlas = db.atlas()
    rng = np.random.default_rng(seed)
    ids = rng.choice(len(db), size=patients, replace=False)
    rows, total, n = [], patients * 2 * 3, 0
    with tempfile.TemporaryDirectory() as tmp:
        for j, i in enumerate(ids):
            row = db.params.iloc[int(i)]
            theta = {k: float(row[k]) for k in ("x", "y", "z", "dw", "rho", "t_end")}
            pat = make_patient(
                atlas, Path(tmp) / f"p{j}", density=db.density(int(i)), theta=theta, seed=seed + j
            )
            inputs = load_patient(t1=pat.t1, seg=pat.seg, labels="brats2021")
            true_f = db.masks(int(i))[0]
            for contrast in ("t1", "inverted"):
                anatomy = inputs.anatomy if contrast == "t1" else inverted(inputs.anatomy)
                for kind in ("syn", "affine", "none"):
                    t = time.perf_counter()
                    if kind == "none":
                        q, f_atlas = _unregistered(anatomy, inputs.flair, atlas)
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # "poor" is what we measure here
                            reg = register(
                                anatomy, atlas, tumor=inputs.flair, kind=kind, skull="off",
                                workdir=Path(tmp) / f"r{j}{contrast}{kind}",
                            )  # fmt: skip
                        q = reg.quality_figures
                        f_img, _ = warp_masks_to_atlas(
                            nib.Nifti1Image(inputs.flair.astype(np.uint8), anatomy.affine),
                            nib.Nifti1Image(inputs.t1gd.astype(np.uint8), anatomy.affine),
                            atlas,
                            reg,
                        )
                        f_atlas = np.asarray(f_img.dataobj) > 0
                    rows.append(
                        {
                            "patient": j,
                            "contrast": contrast,
                            "registration": kind,
                            "true_dice_flair": dice(f_atlas, true_f),
                            **{f: q[f] for f in FIGURES},
                            "seconds": time.perf_counter() - t,
                        }
                    )
                    n += 1
                    report(progress, n, total, "registrations")
    cells = [(c, k) for c in ("t1", "inverted") for k in ("syn", "affine", "none")]

    def means(key):
        return {
            f"mean_{c}_{k}": float(
                np.mean([r[key] for r in rows if r["contrast"] == c and r["registration"] == k])
            )
            for c, k in cells
        }

    truth = np.array([r["true_dice_flair"] for r in rows])
    summary = {"true_dice_flair": means("true_dice_flair")}
    for f in FIGURES:
        v = np.array([r[f] for r in rows], dtype=float)
        summary[f] = {"spearman_with_true_dice": float(spearmanr(v, truth).statistic), **means(f)}
    return {"patients": patients, "n_db": len(db), "rows": rows, "summary": summary}
