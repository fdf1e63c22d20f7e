"""Patient <-> atlas registration with ANTsPy.

The patient's anatomical scan (T1, T1Gd or a white-matter map) is registered to the atlas T1:
rigid + affine + SyN by default (``kind="affine"`` stops after the affine). The tumor, dilated,
is excluded from the similarity metric (``moving_mask``) so that it does not pull the warp.
Raw clinical scans are N4 bias-corrected; a scan with the skull on is first aligned affinely to
the (skull-stripped) atlas, the atlas brain mask is mapped back to crop the skull, and the brain
is then registered again.

Speed: the transforms live in world coordinates, so they are estimated on a copy of the scan
resampled to the atlas' working resolution (``nibabel.processing``; 1.5 mm at 128^3, against
1 mm for a BraTS case), with a shortened affine schedule; they are then applied to the
full-resolution masks and densities. The tumor-masked metric is kept.

Quality, independent of the input contrast (a T1 correlation is not: it is negative for a
T2-like scan and low for a T1Gd):

* ``brain_dice`` — Dice of the patient's brain (the support of a skull-stripped scan)
  warped to the atlas with the atlas brain mask, tumor excluded: geometry only. Reported when
  the scan came skull-stripped (for a scan we strip, the brain is the atlas' mapped back,
  so the figure would be circular).
* ``tissue_eta`` — the correlation ratio of the warped intensities given the atlas tissue class
  (WM, GM, CSF) in the brain, tumor excluded: the share of intensity variation the atlas
  tissues explain (sqrt of 1 - within-class / total variance). Unchanged by any affine
  intensity map, inverted contrasts included.

The headline ``quality`` is ``brain_dice`` when available, else ``tissue_eta``; thresholds for
"poor" were set on synthetic patients whose true deformation is known (docs/methods.md, ``bench
registration``). The T1 correlation is still reported, for reference.

Repeatable: the same scan gives the same transforms, bit for bit. ANTs draws its metric
samples from ``SEED`` (``--random-seed``); with more than one thread the registration's
metric still varies from run to run (N4 alone does not: three runs on two threads, one
digest), so ITK runs one thread (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``, set before ITK's
first filter unless the user set it). Measured on two real 1 mm cases (docs/methods.md):
32-34 s instead of 22-25 s on 2 cores, and two runs give identical transform files (with two
threads and a fixed seed they did not, with ITK's pool threader or its platform threader
alike). A user who sets the variable above 1 trades repeatability for speed.

Intensities: every intensity-based step reads the scan in canonical intensities
(:mod:`gliomatch.intensity`), so a rescaled, offset or z-scored copy of a scan registers as
the scan itself.

Images cross between nibabel (RAS+) and ANTs (LPS) through NIfTI files, so every image keeps
its geometry. Masks are warped as labels (a binary mask: linear interpolation thresholded at
0.5, identical to ``genericLabel`` for two labels and faster), densities linearly.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output
from scipy import ndimage

from gliomatch.atlas import Atlas
from gliomatch.errors import GliomatchError
from gliomatch.intensity import BRAIN_LEVEL, canonical, foreground

__all__ = [
    "Registration",
    "identity",
    "on_grid_of",
    "poor_quality",
    "register",
    "registration_quality",
    "resample_onto",
    "resampled",
    "to_ants",
    "to_nibabel",
    "warp_masks_to_atlas",
    "warp_to_atlas",
    "warp_to_patient",
]

#: The seed of ANTs' metric sampling (see the module notes: repeatable registration).
SEED = 1
#: Below these (see the module notes) the registration is flagged poor.
POOR_QUALITY = {"brain_dice": 0.94, "tissue_eta": 0.45}
#: Affine schedule: iterations per level at shrink ``AFF_SHRINK`` (9, 6 and 3 mm at 128^3).
#: ANTs' default is (2100, 1200, 1200, 10) down to full resolution; on the working-resolution
#: copy these converge as well (``bench registration``).
AFF_ITERATIONS = (100, 50, 25)
AFF_SHRINK = (6, 4, 2)
AFF_SIGMAS = (3, 2, 1)
#: SyN iterations at shrink 4, 2, 1 of the atlas grid (6, 3 and 1.5 mm at 128^3).
SYN_ITERATIONS = (40, 5, 0)
#: N4 on a ~12 mm lattice with three fitting levels of 25 iterations (see ``register``).
N4_CONVERGENCE = {"iters": [25, 25, 25], "tol": 1e-7}
#: N4 is not scale-free: on intensities in 0-1 it under-corrects (on two synthetic head scans
#: the affine registration after it reached T1 correlations 0.20 and 0.86 instead of 0.77 and
#: 0.92), so it gets the canonical intensities times this (the 99th percentile at 1000, a
#: scanner's range); the factor is fixed, so the input stays invariant.
N4_SCALE = 1000.0
#: The fixed domain of the registration: the atlas brain's box plus this margin (voxels).
FIXED_MARGIN = 6


def _ants():
    """ANTsPy (a heavy optional dependency, imported when first needed), with ITK single-
    threaded unless the user chose otherwise: ITK reads the setting once, before its first
    filter, and a registration is repeatable only on one thread (module notes). Its modules'
    invalid escape sequences (``mni2tal.py``'s ``'\\%'``), reported when Python first
    compiles them, are silenced here, at the import that causes them."""
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="invalid escape sequence")
        import ants

    return ants


def to_ants(img: nib.Nifti1Image):
    """nibabel image -> ANTs image, through a NIfTI file (geometry handled by ITK)."""
    ants = _ants()

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "img.nii"
        data = np.asarray(img.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(data, img.affine), str(p))
        return ants.image_read(str(p))


def to_nibabel(img) -> nib.Nifti1Image:
    """ANTs image -> nibabel image (data in memory), through a NIfTI file."""
    ants = _ants()

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "img.nii"
        ants.image_write(img, str(p))
        loaded = nib.load(str(p))
        return nib.Nifti1Image(np.asarray(loaded.dataobj, dtype=np.float32), loaded.affine)


@dataclass
class Registration:
    """Transforms between a patient scan and the atlas, and the two spaces they join.

    ``forward`` maps patient -> atlas (``apply_transforms(fixed=atlas, ...)``), ``inverse``
    atlas -> patient (with ``inverse_invert`` flags). :meth:`to_atlas` and :meth:`to_patient`
    take an image on one grid and return it on the other (checked); :meth:`patient_image`
    wraps an array on the patient's grid with the patient's affine and header, so what leaves
    the pipeline in patient space carries the scan's geometry.
    """

    forward: list[str]
    inverse: list[str]
    inverse_invert: list[bool]
    kind: str
    seconds: float
    skull_stripped: bool
    #: every quality figure: brain_dice (or None), tissue_eta, t1_correlation, measure
    quality_figures: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    #: the ``tumor`` mask given to :func:`register` and its warp to the atlas (label interp.)
    tumor: np.ndarray | None = field(default=None, repr=False)
    tumor_atlas: np.ndarray | None = field(default=None, repr=False)
    #: a skull-stripped scan's own brain on its grid (:func:`brain_support`; None otherwise)
    brain: np.ndarray | None = field(default=None, repr=False)
    #: the two spaces: the atlas, and the patient's scan (its grid, affine and header)
    atlas: Atlas | None = field(default=None, repr=False)
    patient: nib.Nifti1Image | None = field(default=None, repr=False)

    @property
    def quality(self) -> float:
        """The headline quality figure (``quality_figures[measure]``; NaN before it is set)."""
        q = self.quality_figures
        return q[q["measure"]] if q else float("nan")

    def to_atlas(self, img: nib.Nifti1Image, *, label: bool = False) -> nib.Nifti1Image:
        """A patient-space image on the atlas grid (a mask as labels: ``label=True``)."""
        if self.kind == "none":  # the patient is on the atlas grid: nothing to warp
            _same_grid(img, self.atlas.shape, self.atlas.affine, "the patient-space image")
            return self.atlas.to_nifti(np.asarray(img.dataobj, dtype=np.float32))
        if self.kind == "resample":  # the atlas' world frame on another grid
            return self.atlas.to_nifti(
                resample_onto(img, self.atlas.shape, self.atlas.affine, label=label)
            )
        return warp_to_atlas(img, self.atlas, self, label=label)

    def to_patient(self, img: nib.Nifti1Image, *, label: bool = False) -> nib.Nifti1Image:
        """An atlas-grid image on the patient's grid, with the patient's affine and header."""
        if self.kind == "none":
            _same_grid(img, self.atlas.shape, self.atlas.affine, "the atlas-space image")
            return self.patient_image(np.asarray(img.dataobj, dtype=np.float32))
        if self.kind == "resample":
            _same_grid(img, self.atlas.shape, self.atlas.affine, "the atlas-space image")
            shape = self.patient.shape[:3]
            return self.patient_image(resample_onto(img, shape, self.patient.affine, label=label))
        return warp_to_patient(img, self.atlas, self.patient, self, label=label)

    def patient_image(self, data: np.ndarray) -> nib.Nifti1Image:
        """``data``, an array on the patient's grid (boolean masks as uint8), as an image with
        the patient's affine and header; its data type is the array's (no scaling)."""
        data = np.asarray(data)
        if data.shape != tuple(self.patient.shape[:3]):
            raise GliomatchError(
                f"an array of shape {data.shape} is not on the patient's grid "
                f"{tuple(self.patient.shape[:3])}"
            )
        return on_grid_of(data, self.patient)


def _atlas_images(atlas: Atlas):
    t1 = to_ants(atlas.to_nifti(atlas.t1))
    brain = to_ants(atlas.to_nifti(atlas.brain.astype(np.float32)))
    return t1, brain


def fixed_domain(atlas: Atlas, margin: int = FIXED_MARGIN) -> nib.Nifti1Image:
    """The atlas T1 cropped to its brain's box plus ``margin`` voxels (nibabel's slicer keeps
    the world geometry). The registration runs on this domain: a quarter fewer voxels at
    128^3, nothing of the brain lost; outside it a displacement field is zero (ITK), which
    leaves the affine, and no tumor or brain lies there."""
    idx = np.argwhere(atlas.brain)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, atlas.shape)
    img = atlas.to_nifti(atlas.t1.astype(np.float32))
    return img.slicer[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def _has_skull(c: np.ndarray, foreground: np.ndarray, spacing) -> bool:
    """Heuristic: a skull-stripped scan is surrounded by a flat background with almost no
    bright voxels outside a compact brain; a head scan has signal all around the brain. Read
    on the canonical intensities ``c`` of the ``foreground`` (:mod:`gliomatch.intensity`), so
    any intensity convention gives the same answer (for a scan with a zero background, the
    rule is the one on its raw values: above the 20th percentile of the foreground)."""
    fg = c > np.percentile(c[foreground], 20) if foreground.any() else foreground
    vol_cm3 = fg.sum() * float(np.prod(spacing)) / 1000.0
    return vol_cm3 > 2200.0  # brains are ~1.1-1.8 l; heads with scalp are well above


def register(
    anatomy: nib.Nifti1Image,
    atlas: Atlas,
    *,
    tumor: np.ndarray | None = None,
    kind: str = "syn",
    skull: str = "auto",
    workdir: str | Path | None = None,
    dilate_mm: float = 6.0,
) -> Registration:
    """Register ``anatomy`` (patient space) to the atlas T1.

    Parameters
    ----------
    anatomy : nibabel image
        T1, T1Gd or a white-matter map of the patient.
    tumor : bool array on the anatomy grid, optional
        Whole-tumor mask; dilated by ``dilate_mm`` and excluded from the metric.
    kind : {"syn", "affine"}
    skull : {"auto", "on", "off"}
        Whether the scan still has the skull (auto: a volume heuristic).
    workdir : folder for the transform files (a temporary one if omitted: keep it alive!).
    """
    ants = _ants()

    if kind not in ("syn", "affine"):
        raise GliomatchError(f"registration must be 'syn' or 'affine', got {kind!r}")
    if skull not in ("auto", "on", "off"):
        raise GliomatchError(f"skull must be 'auto', 'on' or 'off', got {skull!r}")
    t0 = time.perf_counter()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="gliomatch-reg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw = np.asarray(anatomy.dataobj)
    fg = foreground(raw)
    canon = canonical(raw, fg=fg)  # every intensity step reads this
    spacing = np.linalg.norm(anatomy.affine[:3, :3], axis=0)
    fixed, fixed_brain = _atlas_images(atlas)
    work = working_copy(anatomy, atlas.spacing, canon=canon)
    # N4 on a ~12 mm lattice (shrink 8 of the 1.5 mm copy: the bias field is smooth; 2 s on 2
    # cores against 5 s with ANTs' four levels of 50 iterations, 32 s at shrink 4 and minutes
    # at full resolution; the registration's accuracy is unchanged, docs/methods.md)
    moving = ants.n4_bias_field_correction(
        to_ants(work) * N4_SCALE, shrink_factor=8, convergence=N4_CONVERGENCE
    )
    moving = moving / float(np.percentile(moving.numpy()[moving.numpy() > 0], 99.5) or 1.0)

    keep = None  # where the metric may look (not the tumor)
    if tumor is not None:
        vox = max(1, int(round(dilate_mm / float(spacing.min()))))
        grown = ndimage.binary_dilation(tumor, iterations=vox)
        grown_img = nib.Nifti1Image(grown.astype(np.float32), anatomy.affine)
        grown_work = np.asarray(resample_from_to(grown_img, work, order=0).dataobj) > 0.5
        keep = to_ants(nib.Nifti1Image((~grown_work).astype(np.float32), work.affine))

    if skull == "auto":
        has_skull = bool(_has_skull(canon, fg, spacing))
    else:
        has_skull = skull == "on"
    init = None
    if has_skull:
        # rigid (no scaling: a head must not be shrunk onto a brain) on the whole head, then
        # crop the skull with the atlas brain mask mapped back
        pre = ants.registration(
            fixed,
            moving,
            type_of_transform="Rigid",
            outprefix=str(workdir / "head_"),
            random_seed=str(SEED),
            aff_metric="mattes",
            aff_iterations=AFF_ITERATIONS,
            aff_shrink_factors=AFF_SHRINK,
            aff_smoothing_sigmas=AFF_SIGMAS,
        )
        brain = ants.apply_transforms(
            fixed=moving,
            moving=fixed_brain,
            transformlist=pre["invtransforms"],
            whichtoinvert=[True],
            interpolator="nearestNeighbor",
        )
        brain = ants.iMath(brain, "MD", 3)
        moving = moving * brain
        init = pre["fwdtransforms"]
        keep = brain if keep is None else keep * brain

    # Affine, then SyN from it, both on the brain's box of the atlas and with the tumor masked.
    # (Two calls: ANTsPy's one-call "SyN" ignores the affine schedule and mask, running ANTs'
    # default 2100x1200x1200 iterations down to full resolution.)
    domain = to_ants(fixed_domain(atlas))
    out = ants.registration(
        domain,
        moving,
        type_of_transform="Affine",
        initial_transform=None if init is None else init[0],
        outprefix=str(workdir / "aff_"),
        random_seed=str(SEED),
        moving_mask=keep,
        aff_iterations=AFF_ITERATIONS,
        aff_shrink_factors=AFF_SHRINK,
        aff_smoothing_sigmas=AFF_SIGMAS,
    )
    if kind == "syn":
        out = ants.registration(
            domain,
            moving,
            type_of_transform="SyNOnly",
            initial_transform=out["fwdtransforms"][0],
            outprefix=str(workdir / "reg_"),
            random_seed=str(SEED),
            moving_mask=keep,
            reg_iterations=SYN_ITERATIONS,
            syn_metric="mattes",
        )
    fwd = list(out["fwdtransforms"])
    inv = list(out["invtransforms"])
    # ANTs returns the affine (.mat) among the inverse list; it must be inverted when applied
    invert = [t.endswith(".mat") for t in inv]
    reg = Registration(
        forward=fwd,
        inverse=inv,
        inverse_invert=invert,
        kind=kind,
        seconds=0.0,
        skull_stripped=not has_skull,
        files=fwd + inv,
        atlas=atlas,
        patient=anatomy,
    )
    warped = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=fwd)
    if tumor is not None:
        reg.tumor = tumor
        reg.tumor_atlas = reg.to_atlas(reg.patient_image(tumor), label=True).get_fdata(
            dtype=np.float32
        )
    brain_atlas = None
    if not has_skull:  # a skull-stripped scan: its own brain, warped, against the atlas'
        reg.brain = _support(canon)
        brain_atlas = reg.to_atlas(reg.patient_image(reg.brain), label=True).get_fdata() > 0.5
    reg.quality_figures = registration_quality(
        warped.numpy(), fixed.numpy(), atlas, reg.tumor_atlas, brain_atlas=brain_atlas
    )
    reg.seconds = time.perf_counter() - t0
    # a poor quality (poor_quality) is the caller's warning: personalize() puts it in the
    # result's warnings (the CLI, the report, matches.json)
    return reg


def identity(anatomy: nib.Nifti1Image, atlas: Atlas) -> Registration:
    """The registration of a scan that already lies on the atlas grid (``kind="none"``:
    synthetic patients of the atlas-space benchmarks); anything else is refused. Its quality
    is not measured (``measure`` "none")."""
    _same_grid(anatomy, atlas.shape, atlas.affine, "a scan with registration 'none'")
    return Registration(
        [], [], [], "none", 0.0, skull_stripped=False, atlas=atlas, patient=anatomy,
        quality_figures={"measure": "none", "none": None},
    )  # fmt: skip


def resampled(anatomy: nib.Nifti1Image, atlas: Atlas) -> Registration:
    """The registration of a scan that lies in the atlas' world frame on another grid
    (``kind="resample"``: no transform; images cross between the grids by their affines,
    linearly, masks thresholded at 0.5). For patients already in the atlas' space, e.g. the
    synthetic patients of a benchmark comparing databases of several resolutions on the same
    patients. A grid that does not hold the atlas brain's centre is refused (not in the atlas'
    frame); quality is not measured (``measure`` "none")."""
    centre = atlas.affine @ np.r_[np.argwhere(atlas.brain).mean(axis=0), 1.0]
    vox = np.linalg.inv(anatomy.affine) @ centre
    if np.any(vox[:3] < -0.5) or np.any(vox[:3] > np.asarray(anatomy.shape[:3]) - 0.5):
        raise GliomatchError(
            "registration 'resample': the scan's grid does not hold the atlas brain's centre, "
            "so the scan is not in the atlas' world frame; register it ('syn' or 'affine')"
        )
    return Registration(
        [], [], [], "resample", 0.0, skull_stripped=False, atlas=atlas, patient=anatomy,
        quality_figures={"measure": "none", "none": None},
    )  # fmt: skip


def resample_onto(img: nib.Nifti1Image, shape, affine, *, label: bool = False) -> np.ndarray:
    """``img``'s data on the grid (``shape``, ``affine``) of the same world frame: linear
    interpolation (``nibabel.processing``), zero outside; a binary mask (``label``)
    thresholded at 0.5 as :func:`_apply` does, another label map by nearest neighbour."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    binary = label and _binary(data)
    order = 0 if label and not binary else 1
    src = nib.Nifti1Image(data, img.affine)
    out = resample_from_to(src, (tuple(shape), affine), order=order, mode="constant", cval=0.0)
    arr = np.asarray(out.dataobj, dtype=np.float32)
    return (arr > 0.5).astype(np.float32) if binary else arr


def poor_quality(figures: dict) -> str | None:
    """The warning for quality ``figures`` whose headline is below ``POOR_QUALITY``, else
    None. The figure is rounded down, so one just under the threshold never reads as equal
    to it (0.9395 is "0.939, below 0.94", not "0.94, below 0.94")."""
    measure = figures["measure"]
    value = figures[measure]
    if not value < POOR_QUALITY[measure]:
        return None
    return (
        f"registration quality is poor ({measure} {np.floor(value * 1000) / 1000:.3f}, below "
        f"{POOR_QUALITY[measure]}); check the inputs and the overlay in the report"
    )


def working_copy(
    anatomy: nib.Nifti1Image, spacing_mm: float, *, canon: np.ndarray | None = None
) -> nib.Nifti1Image:
    """The scan in canonical intensities (:func:`gliomatch.intensity.canonical`: >= 0,
    background 0, whatever its intensity convention; ``canon`` when already computed) at the
    atlas' working resolution (linear interpolation, which keeps them >= 0) when it is finer;
    on its own grid otherwise. The world geometry is kept, so transforms estimated on it
    apply to the original grid."""
    if canon is None:
        canon = canonical(np.asarray(anatomy.dataobj))
    img = nib.Nifti1Image(canon, anatomy.affine)
    zooms = np.linalg.norm(anatomy.affine[:3, :3], axis=0)
    if zooms.min() >= 0.8 * spacing_mm:
        return img
    out = resample_to_output(img, voxel_sizes=[max(spacing_mm, z) for z in zooms], order=1)
    return nib.Nifti1Image(np.asarray(out.dataobj, np.float32), out.affine)


def brain_support(data: np.ndarray) -> np.ndarray:
    """The brain of a skull-stripped scan: canonical intensity (:mod:`gliomatch.intensity`)
    above ``BRAIN_LEVEL``, holes (dark ventricles) filled. The same mask for any intensity
    convention (rescaled, offset, z-scored with a zero or a negative background); faint
    signal left outside by a loose mask is below the level."""
    return _support(canonical(data))


def _support(c: np.ndarray) -> np.ndarray:
    """:func:`brain_support` of canonical intensities ``c``."""
    return ndimage.binary_fill_holes(c > BRAIN_LEVEL)


def correlation_ratio(values: np.ndarray, labels: np.ndarray) -> float:
    """sqrt(1 - within-class variance / total variance) of ``values`` grouped by ``labels``."""
    v = np.asarray(values, dtype=np.float64)
    total = v.var() * len(v)
    if total == 0:
        return 0.0
    within = 0.0
    for c in np.unique(labels):
        x = v[labels == c]
        within += x.var() * len(x)
    return float(np.sqrt(max(0.0, 1.0 - within / total)))


def registration_quality(
    warped: np.ndarray,
    atlas_t1: np.ndarray,
    atlas: Atlas,
    tumor_atlas: np.ndarray | None = None,
    *,
    brain_atlas: np.ndarray | None = None,
) -> dict:
    """The quality figures of the module notes for a scan warped to the atlas grid:
    ``brain_dice`` (when ``brain_atlas``, the scan's own brain warped, is given),
    ``tissue_eta``, ``t1_correlation`` and ``measure`` (the headline's name)."""
    exclude = np.zeros(atlas.shape, bool)
    if tumor_atlas is not None:
        exclude = ndimage.binary_dilation(tumor_atlas > 0, iterations=2)
    mask = atlas.brain & ~exclude
    a, b = warped[mask].astype(np.float64), atlas_t1[mask].astype(np.float64)
    corr = 0.0 if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])
    classes = np.argmax(np.stack([atlas.wm, atlas.gm, atlas.csf]), axis=0)[mask]
    out = {"t1_correlation": corr, "tissue_eta": correlation_ratio(a, classes)}
    out["brain_dice"] = None
    if brain_atlas is not None:
        p, q = brain_atlas & ~exclude, atlas.brain & ~exclude
        out["brain_dice"] = float(2 * (p & q).sum() / max(1, p.sum() + q.sum()))
    out["measure"] = "brain_dice" if out["brain_dice"] is not None else "tissue_eta"
    return out


def _same_grid(img: nib.Nifti1Image, shape, affine, what: str) -> None:
    if tuple(img.shape[:3]) != tuple(shape) or not np.allclose(img.affine, affine, atol=1e-4):
        raise GliomatchError(
            f"{what} is on another grid (shape {tuple(img.shape)}) than expected "
            f"(shape {tuple(shape)}, with its affine)"
        )


def _binary(data: np.ndarray) -> bool:
    """Whether a label map holds only 0 and 1 (warped linearly, thresholded at 0.5)."""
    return bool(np.all((data == 0) | (data == 1)))


def _apply(fixed, img: nib.Nifti1Image, transforms, invert, label: bool) -> np.ndarray:
    """``img`` resampled onto ``fixed`` through ``transforms``.

    ``label``: a mask. A binary one is interpolated linearly and thresholded at 0.5, which is
    what generic-label interpolation does for two labels (the larger of the two linearly
    interpolated indicators, m and 1 - m) at two thirds of its cost; other label maps use
    generic-label interpolation itself."""
    ants = _ants()

    binary = label and _binary(np.asarray(img.dataobj))
    out = ants.apply_transforms(
        fixed=fixed,
        moving=to_ants(img),
        transformlist=transforms,
        whichtoinvert=invert,
        interpolator="genericLabel" if label and not binary else "linear",
    )
    arr = to_nibabel(out).get_fdata(dtype=np.float32)
    return (arr > 0.5).astype(np.float32) if binary else arr


def warp_to_atlas(
    img: nib.Nifti1Image, atlas: Atlas, reg: Registration, *, label: bool = False
) -> nib.Nifti1Image:
    """Patient-space image -> image on the atlas grid, with the atlas affine (masks as labels,
    see :func:`_apply`; linear otherwise)."""
    fixed = to_ants(atlas.to_nifti(np.zeros(atlas.shape, np.float32)))
    return atlas.to_nifti(_apply(fixed, img, reg.forward, None, label))


def warp_masks_to_atlas(
    flair: nib.Nifti1Image, t1gd: nib.Nifti1Image, atlas: Atlas, reg: Registration
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Patient FLAIR and T1Gd mask images (one grid) -> uint8 mask images on the atlas grid,
    T1Gd kept inside FLAIR.

    The FLAIR warp that :func:`register` already made (the tumor it excluded) is reused.
    """
    _same_grid(t1gd, flair.shape, flair.affine, "the T1Gd mask")
    f_data = np.asarray(flair.dataobj) > 0
    if reg.tumor is not None and reg.tumor_atlas is not None and np.array_equal(reg.tumor, f_data):
        f = reg.tumor_atlas > 0.5
    else:
        f = reg.to_atlas(flair, label=True).get_fdata() > 0.5
    t = reg.to_atlas(t1gd, label=True).get_fdata() > 0.5
    return atlas.to_nifti(f.astype(np.uint8)), atlas.to_nifti((t & f).astype(np.uint8))


def on_grid_of(data: np.ndarray, ref: nib.Nifti1Image) -> nib.Nifti1Image:
    """``data`` (on ``ref``'s grid; booleans as uint8) as an image with ``ref``'s affine and
    header (description, intent, orientation codes), its data type the array's, unscaled
    (as ``nibabel.processing.resample_from_to`` keeps the reference's header)."""
    data = np.asarray(data)
    data = data.astype(np.uint8) if data.dtype == bool else data
    img = nib.Nifti1Image(data, ref.affine, header=ref.header)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    return img


def warp_to_patient(
    img: nib.Nifti1Image,
    atlas: Atlas,
    patient: nib.Nifti1Image,
    reg: Registration,
    *,
    label: bool = False,
) -> nib.Nifti1Image:
    """Atlas-grid image (checked) -> image on the patient's grid with the patient's affine."""
    _same_grid(img, atlas.shape, atlas.affine, "the atlas-space image")
    data = _apply(
        to_ants(patient),
        nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine),
        reg.inverse,
        reg.inverse_invert,
        label,
    )
    return on_grid_of(data, patient)
