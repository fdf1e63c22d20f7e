"""The patient's own tissue: WM, GM and CSF probability maps on a working grid in the patient's
space, where the growth model runs in the patient's anatomy instead of the atlas'.

**The working grid.** Isotropic voxels of ``WORKING_MM`` (1.5 mm, the database's voxel at
128^3), axes along the scan's own voxel axes, cropped to the brain's bounding box plus
``WORKING_MARGIN_MM``: a 1 mm BraTS brain becomes about 100 x 120 x 100 voxels.

**The maps.** Maps the data give (PREDICT-GBM's ``gm``/``wm``/``csf``, a recurrence cohort's
tissue maps) are resampled onto the working grid as they are (``source="given"``). Otherwise
the atlas' WM, GM and CSF are mapped to the patient with the registration (``"atlas priors"``):
a SyN registration carries the atlas' tissue onto the patient's brain to within its accuracy
(the registration's quality figures say how well).

Why not refine the mapped priors on the T1 intensities? Measured on a deformed-atlas synthetic
(the stress benchmark's anatomy factor, truth known): ANTs' Atropos initialized by and weighted
to the priors took 59 s on one thread at 1.5 mm (the whole refinement's budget is 20 s); a
prior-weighted Gaussian mixture (SPM's unified-segmentation model without bias correction, 0.5
s) raised the WM Dice from 0.893 to 0.956 but lowered the CSF Dice from 0.741 to 0.535, letting
tumor grow into the ventricles. Neither is an improvement a fit can rely on, so the priors are
used as mapped; give the maps (``--wm/--gm/--csf``, PREDICT-GBM's) when you have better ones.

**Tumor rule.** Tumor is observed in every voxel of the whole tumor (the FLAIR mask), so those
voxels must be tissue to the growth model: where the maps call a tumor voxel non-tissue
(WM + GM < 0.5: the mapped atlas put a ventricle or a sulcus there, or the given maps
mislabelled the tumor), its WM becomes ``1 - GM`` (tumor spreads along white matter). The three
maps are then normalized to sum to 1 in the brain and are 0 outside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from gliomatch.atlas import TISSUE_THRESHOLD
from gliomatch.errors import GliomatchError

__all__ = [
    "TISSUES",
    "WORKING_MARGIN_MM",
    "WORKING_MM",
    "PatientTissue",
    "on_working",
    "patient_tissue",
    "working_grid",
]

TISSUES = ("wm", "gm", "csf")
WORKING_MM = 1.5
WORKING_MARGIN_MM = 6.0


@dataclass
class PatientTissue:
    """Tissue probability maps on the working grid (``affine``), the brain and the whole tumor
    there, and how the maps were made (``source``: ``given`` or ``atlas priors``)."""

    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    tumor: np.ndarray
    affine: np.ndarray
    source: str
    #: tumor voxels the maps called non-tissue, made white matter (the tumor rule)
    tumor_voxels_made_tissue: int = 0
    seconds: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.wm.shape)

    @property
    def spacing(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))

    def image(self, name: str) -> nib.Nifti1Image:
        """One map (``wm``, ``gm``, ``csf``, ``brain``, ``tumor``) as an image on the working
        grid."""
        data = np.asarray(getattr(self, name), dtype=np.float32)
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_xyzt_units("mm")
        return img

    def summary(self) -> dict:
        v = self.spacing**3 / 1000.0
        return {
            "source": self.source,
            "working_grid": {"shape": list(self.shape), "spacing_mm": self.spacing},
            "wm_cm3": float(self.wm[self.brain].sum() * v),
            "gm_cm3": float(self.gm[self.brain].sum() * v),
            "csf_cm3": float(self.csf[self.brain].sum() * v),
            "tumor_voxels_made_tissue": int(self.tumor_voxels_made_tissue),
            "seconds": float(self.seconds),
        }


def working_grid(
    brain: np.ndarray,
    affine: np.ndarray,
    spacing: float = WORKING_MM,
    margin_mm: float = WORKING_MARGIN_MM,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of the working grid of a brain mask given on a scan's grid (module
    notes): isotropic ``spacing`` mm along the scan's voxel axes, cropped to the brain's box
    plus ``margin_mm``.

    >>> shape, aff = working_grid(np.ones((20, 20, 10), bool), np.diag([1, 1, 2, 1.0]), 2.0, 0)
    >>> shape, float(aff[0, 0]), float(aff[2, 2])
    ((11, 11, 10), 2.0, 2.0)
    """
    brain = np.asarray(brain, bool)
    if not brain.any():
        raise GliomatchError("the brain mask is empty: no working grid")
    if not np.isfinite(spacing) or spacing <= 0:
        raise GliomatchError(f"working grid spacing must be > 0 mm, got {spacing}")
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    directions = affine[:3, :3] / zooms  # unit vectors of the scan's voxel axes
    extent_mm = (hi - lo) * zooms + 2 * margin_mm
    shape = tuple(int(np.ceil(e / spacing - 1e-9)) + 1 for e in extent_mm)
    origin = affine[:3, :3] @ lo + affine[:3, 3] - directions @ np.full(3, margin_mm)
    out = np.eye(4)
    out[:3, :3] = directions * spacing
    out[:3, 3] = origin
    return shape, out


def on_working(img: nib.Nifti1Image, shape, affine, order: int = 1) -> np.ndarray:
    """``img`` resampled onto the working grid ``(shape, affine)`` (0 outside ``img``)."""
    out = resample_from_to(img, (tuple(shape), affine), order=order, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)


def _normalized(maps: dict, brain: np.ndarray) -> dict:
    total = sum(np.clip(maps[t], 0, None) for t in TISSUES)
    out = {}
    for t in TISSUES:
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(total > 1e-6, np.clip(maps[t], 0, None) / total, 0.0)
        if t == "csf":  # a brain voxel no map claims: CSF (it holds no tumor cells)
            p = np.where(brain & (total <= 1e-6), 1.0, p)
        out[t] = np.where(brain, p, 0.0).astype(np.float32)
    return out


def _tumor_rule(maps: dict, tumor: np.ndarray) -> tuple[dict, int]:
    """Tumor voxels that are not tissue become white matter (module notes)."""
    lost = tumor & ((maps["wm"] + maps["gm"]) < TISSUE_THRESHOLD)
    if lost.any():
        maps = dict(maps)
        maps["wm"] = np.where(lost, 1.0 - maps["gm"], maps["wm"]).astype(np.float32)
        maps["csf"] = np.where(lost, 0.0, maps["csf"]).astype(np.float32)
    return maps, int(lost.sum())


def patient_tissue(inputs, atlas, reg, brain: np.ndarray, *, spacing: float = WORKING_MM):
    """The patient's tissue maps on the working grid (module notes): ``inputs.tissue`` when the
    data give maps, else the atlas' mapped with ``reg``.

    Parameters
    ----------
    inputs : PatientInputs
        The patient (its anatomy's grid, whole-tumor mask and given tissue maps, if any).
    atlas : Atlas
    reg : Registration
        Its registration to ``atlas``.
    brain : ndarray of bool
        The brain on the anatomy's grid (the plans' brain).
    spacing : float
        The working grid's voxel (mm).
    """
    t0 = time.perf_counter()
    grid_aff = inputs.anatomy.affine
    shape, aff = working_grid(brain, grid_aff, spacing)

    def onto(arr, order=1):
        return on_working(nib.Nifti1Image(np.asarray(arr, np.float32), grid_aff), shape, aff, order)

    brain_w = onto(brain) > 0.5
    tumor_w = onto(inputs.flair) > 0.5
    brain_w |= tumor_w
    given = getattr(inputs, "tissue", None)
    if given is not None:
        maps = {t: onto(given[t]) if t in given else np.zeros(shape, np.float32) for t in TISSUES}
        source = "given"
    else:
        if reg.kind == "none":  # the patient lies on the atlas grid
            maps = {t: on_working(atlas.to_nifti(getattr(atlas, t)), shape, aff) for t in TISSUES}
        else:
            ref = nib.Nifti1Image(np.zeros(shape, np.float32), aff)
            onto_working = replace(reg, patient=ref)  # the same transforms, the working grid
            maps = {
                t: np.asarray(
                    onto_working.to_patient(atlas.to_nifti(getattr(atlas, t))).dataobj,
                    dtype=np.float32,
                )
                for t in TISSUES
            }
        source = "atlas priors"
    maps = _normalized(maps, brain_w)
    maps, made = _tumor_rule(maps, tumor_w)
    maps = _normalized(maps, brain_w)
    return PatientTissue(
        **maps, brain=brain_w, tumor=tumor_w, affine=aff, source=source,
        tumor_voxels_made_tissue=made, seconds=time.perf_counter() - t0,
    )  # fmt: skip
