"""Reading and checking patient inputs: anatomy, tumor label maps, binary masks.

Tumor label conventions (whole tumor = FLAIR hyperintensity, tumor core = T1Gd; a label listed
under "never" is known but belongs to neither, e.g. a resection cavity):

==========  ==========================================  =============  ========  =====
convention  labels                                      FLAIR          T1Gd      never
==========  ==========================================  =============  ========  =====
brats2013   1 necrosis, 2 edema, 3 non-enhancing,       1, 2, 3, 4     1, 3, 4
            4 enhancing (BraTS 2013-2016)
brats2021   1 necrosis/non-enhancing core, 2 edema,     1, 2, 4        1, 4
            4 enhancing (BraTS 2017-2021)
brats2023   1 non-enhancing core, 2 edema (SNFH),       1, 2, 3        1, 3
            3 enhancing (BraTS 2023 glioma)
brats2024   1 non-enhancing core, 2 edema (SNFH),       1, 2, 3        1, 3      4
            3 enhancing, 4 resection cavity (BraTS
            2024 post-treatment)
predictgbm  1 necrotic, 2 edema, 3 enhancing,           1, 2, 3        1, 3      4
            4 resection cavity (PREDICT-GBM; the
            cavity in follow-up scans)
gliodil     1 enhancing, 3 edema, 4 necrotic (the       1, 3, 4        1, 4
            GliODIL study's data, BraTS-toolkit
            order)
==========  ==========================================  =============  ========  =====

``auto`` picks a convention only when exactly one family fits the labels present (labels
{1, 2, 4}: brats2021; {1, 2, 3} read the same way by brats2023, brats2024 and predictgbm:
brats2023) and otherwise refuses, listing the conventions that fit. A map holding only 0 and 1
is a binary mask, not a label map: it is refused under every convention, ``auto`` and named
ones alike (every convention reads 1 as tumor core, so a whole-tumor mask would become all
core and the standard CTV would grow around the edema), with a pointer to
``--flair-mask``/``--t1gd-mask``; a tumor that really is all core is given as both masks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from gliomatch.errors import GliomatchError
from gliomatch.search import Query

__all__ = [
    "LABEL_SCHEMES",
    "PatientInputs",
    "atlas_query",
    "binary_mask",
    "load_nifti",
    "load_patient",
    "masks_from_labels",
    "on_grid",
    "recurrence_masks",
    "positive_days",
]

LABEL_SCHEMES = {
    "brats2013": {"flair": (1, 2, 3, 4), "t1gd": (1, 3, 4), "enhancing": (4,), "never": ()},
    "brats2021": {"flair": (1, 2, 4), "t1gd": (1, 4), "enhancing": (4,), "never": ()},
    "brats2023": {"flair": (1, 2, 3), "t1gd": (1, 3), "enhancing": (3,), "never": ()},
    "brats2024": {"flair": (1, 2, 3), "t1gd": (1, 3), "enhancing": (3,), "never": (4,)},
    "predictgbm": {"flair": (1, 2, 3), "t1gd": (1, 3), "enhancing": (3,), "never": (4,)},
    "gliodil": {"flair": (1, 3, 4), "t1gd": (1, 4), "enhancing": (1,), "never": ()},
}
#: When several conventions fit and read the labels identically, ``auto`` names this one.
_PREFERENCE = ("brats2021", "brats2023", "predictgbm", "brats2013", "brats2024", "gliodil")
#: What each convention calls a label, for error messages.
_MEANING = {
    "brats2013": {4: "enhancing"},
    "brats2021": {4: "enhancing"},
    "brats2024": {4: "cavity"},
    "gliodil": {4: "necrotic"},
}
LABEL_CHOICES = ("auto", *LABEL_SCHEMES)
#: Affines that differ by less than this (mm, per entry) are "the same grid, header noise".
AFFINE_TOLERANCE_MM = 0.5


def load_nifti(path, name: str) -> nib.Nifti1Image:
    """Load a 3-D NIfTI image (a 4-D one with a single volume is squeezed); clear errors."""
    path = Path(path)
    if not path.is_file():
        raise GliomatchError(f"{name} {path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise GliomatchError(f"{name} {path}: cannot read as NIfTI ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise GliomatchError(
            f"{name} {path}: a {type(img).__name__} file, not NIfTI; convert it to .nii.gz "
            "first (e.g. mri_convert, or nibabel: nib.save(nib.Nifti1Image(img.get_fdata(), "
            "img.affine), 'out.nii.gz'))"
        )
    if data.dtype.kind not in "biuf":
        raise GliomatchError(f"{name} {path}: unsupported voxel type {data.dtype}")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GliomatchError(
            f"{name} {path}: expected a 3-D image, got shape {data.shape} "
            "(split 4-D series into single volumes first)"
        )
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise GliomatchError(f"{name} {path}: contains NaN or infinite values")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise GliomatchError(f"{name} {path}: invalid affine in the header")
    out = nib.Nifti1Image(data, img.affine, header=img.header)
    out.set_filename(str(path))
    return out


def atlas_query(flair, t1gd, shape) -> Query:
    """The query of two atlas-space mask files (FLAIR = whole tumor, T1Gd = core).

    Both must lie on one grid, the database's ``shape``; T1Gd outside FLAIR is dropped with a
    warning (:meth:`Query.from_masks`).
    """
    f_img, t_img = load_nifti(flair, "FLAIR mask"), load_nifti(t1gd, "T1Gd mask")
    if f_img.shape != t_img.shape or not np.allclose(f_img.affine, t_img.affine, atol=1e-3):
        raise GliomatchError(f"the FLAIR mask {flair} and the T1Gd mask {t1gd} lie on other grids")
    return Query.from_masks(
        np.asarray(f_img.dataobj), np.asarray(t_img.dataobj), shape, affine=f_img.affine
    )


def positive_days(value, option: str) -> float:
    """``value`` as a positive, finite number of days; else a one-line error naming ``option``
    (the parameter, ``age_days``, or the flag, ``--age-days``, as the caller sees it)."""
    try:
        days = float(value)
    except (TypeError, ValueError):
        days = float("nan")
    if isinstance(value, bool) or not (np.isfinite(days) and days > 0):
        raise GliomatchError(f"{option} must be a positive number of days, got {value!r}")
    return days


def on_grid(
    img: nib.Nifti1Image, ref: nib.Nifti1Image, name: str, ref_name: str, *, label: bool = True
) -> np.ndarray:
    """``img``'s data on ``ref``'s grid.

    Same shape and affine: returned as is. Same shape and an affine that differs only within
    ``AFFINE_TOLERANCE_MM`` (header noise): resampled onto ``ref`` with a warning. Otherwise
    the grids are mismatched: an error naming both files.
    """
    data = np.asarray(img.dataobj)
    if data.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-4):
        return data
    diff = float(np.abs(img.affine - ref.affine).max())
    if data.shape == ref.shape and diff <= AFFINE_TOLERANCE_MM:
        warnings.warn(
            f"{name}: its header differs slightly from {ref_name}'s (max affine difference "
            f"{diff:.3g} mm); resampled onto {ref_name}'s grid",
            stacklevel=2,
        )
        moved = resample_from_to(
            nib.Nifti1Image(data, img.affine), ref, order=0 if label else 1, mode="constant"
        )
        return np.asarray(moved.dataobj)
    raise GliomatchError(
        f"{name} ({img.get_filename()}) is on another grid than {ref_name} "
        f"({ref.get_filename()}): shapes {data.shape} vs {ref.shape}, max affine difference "
        f"{diff:.3g} mm; segmentations must be on the grid of the anatomical scan"
    )


def _listed(values, most: int = 8) -> str:
    """``values`` sorted, as a short list: the first ``most`` and how many in all (an
    anatomical scan passed as a segmentation holds thousands)."""
    v = sorted(values)
    return str(v) if len(v) <= most else f"[{', '.join(map(str, v[:most]))}, ... ({len(v)} values)]"


def _fitting(values: set[int]) -> list[str]:
    return [name for name, sc in LABEL_SCHEMES.items() if values <= {0, *sc["flair"], *sc["never"]}]


def _reading(name: str, values: set[int]) -> tuple:
    sc = LABEL_SCHEMES[name]
    return tuple((v in sc["flair"], v in sc["t1gd"]) for v in sorted(values))


def masks_from_labels(
    labels: np.ndarray, scheme: str = "auto", *, name: str = "segmentation", flag: str = "--labels"
):
    """(FLAIR, T1Gd) boolean masks from a tumor label map; returns ``(flair, t1gd, scheme)``.
    ``flag``: the option an error tells the user to pass (``--followup-labels`` for a
    follow-up map).

    See the module notes for the conventions and how ``auto`` chooses.
    """
    lab = np.asarray(labels)
    if lab.dtype.kind not in "biuf":
        raise GliomatchError(f"{name}: labels must be integers, got {lab.dtype}")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise GliomatchError(f"{name}: labels must be integers")
    values = set(np.unique(lab).astype(int).tolist())
    tumor = values - {0}
    if scheme not in LABEL_CHOICES:
        raise GliomatchError(
            f"unknown label convention {scheme!r}; use one of {', '.join(LABEL_CHOICES)}"
        )
    if not tumor:
        raise GliomatchError(f"{name}: the tumor is empty (no tumor label anywhere)")
    if tumor == {1}:
        raise GliomatchError(
            f"{name}: holds only 0 and 1, a binary mask rather than a tumor label map (read "
            f"as {'a label map' if scheme == 'auto' else scheme}, all of it would be tumor "
            "core); pass a whole-tumor mask as --flair-mask and a core mask as --t1gd-mask (a "
            "tumor that is all core: the same file as both)"
        )
    if scheme == "auto":
        fits = _fitting(values)
        if not fits:
            raise GliomatchError(
                f"{name}: labels {_listed(tumor)} fit no known convention "
                f"({', '.join(LABEL_SCHEMES)}); relabel it or pass binary masks"
            )
        readings = {_reading(f, values) for f in fits}
        if len(readings) > 1:
            named = ", ".join(
                f + (f" (4 = {_MEANING[f][4]})" if 4 in tumor and f in _MEANING else "")
                for f in fits
            )
            hint = f" (a BraTS 2017-2021 map: {flag} brats2021)" if "brats2021" in fits else ""
            raise GliomatchError(
                f"{name}: labels {_listed(tumor)} fit several conventions that read them "
                f"differently: {named}; pass {flag} with the right one{hint}"
            )
        scheme = next(p for p in _PREFERENCE if p in fits)
    sc = LABEL_SCHEMES[scheme]
    allowed = {0, *sc["flair"], *sc["never"]}
    unknown = sorted(values - allowed)
    if unknown:
        raise GliomatchError(
            f"{name}: unexpected labels {_listed(unknown)} for {scheme} "
            f"(expected {sorted(allowed)}); "
            f"conventions that fit: {', '.join(_fitting(values)) or 'none'}"
        )
    flair = np.isin(lab, sc["flair"])
    t1gd = np.isin(lab, sc["t1gd"])
    if not flair.any():
        raise GliomatchError(
            f"{name}: no tumor label of {scheme} present (only {_listed(tumor)}, which are "
            "never tumor in that convention)"
        )
    return flair, t1gd, scheme


def recurrence_masks(
    labels: np.ndarray, scheme: str = "auto", *, name: str = "follow-up", flag: str = "--labels"
):
    """(enhancing, any tumor) boolean masks of a follow-up label map, as PREDICT-GBM scores a
    recurrence: the enhancing label alone, and every tumor label (a cavity label, "never" in
    the convention, belongs to neither). Unlike a pre-operative map, a follow-up may hold no
    tumor at all (all background or only a cavity): both masks are then empty."""
    lab = np.asarray(labels)
    if lab.dtype.kind in "biuf" and np.all(np.isfinite(lab)):
        never = LABEL_SCHEMES[scheme]["never"] if scheme in LABEL_SCHEMES else ()
        values = set(np.unique(lab).astype(int).tolist())
        if values <= {0, *never}:
            return np.zeros(lab.shape, bool), np.zeros(lab.shape, bool), scheme
        if scheme in LABEL_SCHEMES and values <= {0, 1, *never}:
            # a recurrence of label 1 alone is a named convention's reading, not a binary mask
            sc = LABEL_SCHEMES[scheme]
            return np.isin(lab, sc["enhancing"]), np.isin(lab, sc["flair"]), scheme
    flair, _, scheme = masks_from_labels(lab, scheme, name=name, flag=flag)
    return np.isin(lab, LABEL_SCHEMES[scheme]["enhancing"]), flair, scheme


def binary_mask(img: nib.Nifti1Image, name: str) -> np.ndarray:
    data = np.asarray(img.dataobj)
    values = np.unique(data)
    if not np.all(np.isin(values, (0, 1))):
        raise GliomatchError(
            f"{name} ({img.get_filename()}): not a binary mask (values "
            f"{', '.join(f'{v:g}' for v in values[:6])}); for a BraTS label map use --seg"
        )
    return data.astype(bool)


@dataclass
class PatientInputs:
    anatomy: nib.Nifti1Image
    anatomy_kind: str
    flair: np.ndarray
    t1gd: np.ndarray
    label_scheme: str | None
    warnings: list[str] = field(default_factory=list)
    #: A follow-up scan's (FLAIR, T1Gd) masks on the anatomy's grid (``--followup-seg``).
    followup: tuple[np.ndarray, np.ndarray] | None = None
    #: The brain on the anatomy's grid when the data give it (a cohort's brain mask or tissue
    #: maps); the plans are clipped to it instead of one derived from the registration.
    brain: np.ndarray | None = None
    #: The patient's own tissue probability maps (``wm``, ``gm``, ``csf`` arrays on the
    #: anatomy's grid) when the data give them; the refinement runs the growth model on them.
    tissue: dict | None = None
    #: The files read, by role (``t1``, ``seg``, ...): the report's provenance lists them with
    #: their checksums.
    sources: dict = field(default_factory=dict)


def load_patient(
    *,
    t1=None,
    t1c=None,
    wm=None,
    seg=None,
    flair_mask=None,
    t1gd_mask=None,
    labels: str = "auto",
    followup_seg=None,
    gm=None,
    csf=None,
) -> PatientInputs:
    """Read and check a patient's files (see the module notes); clear errors naming files.

    ``followup_seg``: a later label map of the same patient on the same grid as the anatomy
    (registered to the first scan), for two-scan inference. ``gm`` (with ``wm``) and ``csf``:
    the patient's grey-matter and CSF probability maps: with them the patient's own tissue
    maps are given (the refinement's growth model runs on them) instead of mapped from the
    atlas."""
    if (gm is not None or csf is not None) and (wm is None or gm is None):
        raise GliomatchError(
            "the patient's tissue maps need both wm and gm (--wm, --gm; --csf optional)"
        )
    given = [(k, v) for k, v in (("t1", t1), ("t1c", t1c), ("wm", wm)) if v is not None]
    if len(given) != 1:
        raise GliomatchError(
            "give exactly one anatomical reference: t1, t1c or wm (--t1, --t1c, --wm)"
        )
    kind, path = given[0]
    anatomy = load_nifti(path, {"t1": "T1", "t1c": "T1Gd", "wm": "white-matter map"}[kind])
    if float(np.asarray(anatomy.dataobj).max()) <= float(np.asarray(anatomy.dataobj).min()):
        raise GliomatchError(f"anatomy {path}: the image is constant")
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        if seg is not None:
            if flair_mask is not None or t1gd_mask is not None:
                raise GliomatchError(
                    "give either seg (--seg) or flair_mask/t1gd_mask (--flair-mask/--t1gd-mask), "
                    "not both"
                )
            s = load_nifti(seg, "segmentation")
            data = on_grid(s, anatomy, f"segmentation {seg}", "the anatomy")
            flair, t1gd, scheme = masks_from_labels(data, labels, name=f"segmentation {seg}")
        else:
            if flair_mask is None or t1gd_mask is None:
                raise GliomatchError(
                    "give seg (--seg), or both flair_mask and t1gd_mask (--flair-mask, --t1gd-mask)"
                )

            def mask_on_anatomy(path, name):
                img = load_nifti(path, name)
                binary_mask(img, name)  # refuses non-binary values, naming the file
                return on_grid(img, anatomy, f"{name} {path}", "the anatomy").astype(bool)

            flair = mask_on_anatomy(flair_mask, "FLAIR mask")
            t1gd = mask_on_anatomy(t1gd_mask, "T1Gd mask")
            scheme = None
            if not flair.any():
                raise GliomatchError(f"FLAIR mask {flair_mask}: empty (no tumor)")
        followup = None
        if followup_seg is not None:
            s2 = load_nifti(followup_seg, "follow-up segmentation")
            data2 = on_grid(s2, anatomy, f"follow-up segmentation {followup_seg}", "the anatomy")
            f2, t2, _ = masks_from_labels(
                data2, scheme or labels, name=f"follow-up segmentation {followup_seg}"
            )
            if not f2.any():
                raise GliomatchError(f"follow-up segmentation {followup_seg}: no tumor label")
            followup = (f2 | t2, t2)
        outside = t1gd & ~flair
        if outside.any():
            warnings.warn(
                f"{int(outside.sum())} T1Gd voxels lie outside the FLAIR mask; the FLAIR mask "
                "was extended to include them (the tumor core is part of the whole tumor)",
                stacklevel=2,
            )
            flair = flair | t1gd
        caught = [str(x.message) for x in w]
    for msg in caught:
        warnings.warn(msg, stacklevel=2)
    tissue = None
    if gm is not None:
        tissue = {
            name: probability_map(path, anatomy, name.upper())
            for name, path in (("wm", wm), ("gm", gm), ("csf", csf))
            if path is not None
        }
    given = dict(t1=t1, t1c=t1c, wm=wm, gm=gm, csf=csf, seg=seg, flair_mask=flair_mask,
                 t1gd_mask=t1gd_mask, followup_seg=followup_seg)  # fmt: skip
    sources = {role: str(path) for role, path in given.items() if path is not None}
    return PatientInputs(anatomy, kind, flair, t1gd, scheme, caught, followup, tissue=tissue,
                         sources=sources)  # fmt: skip


def probability_map(
    path, ref: nib.Nifti1Image, name: str, ref_name: str = "the anatomy"
) -> np.ndarray:
    """A tissue probability map read from ``path`` onto ``ref``'s grid (:func:`on_grid`),
    checked (finite, values in [0, 1] up to 1e-3) and clipped to [0, 1]; one-line errors name
    the file."""
    img = load_nifti(path, f"{name} map")
    data = np.asarray(on_grid(img, ref, f"{name} map {path}", ref_name, label=False), np.float32)
    if not np.all(np.isfinite(data)) or data.min() < -1e-3 or data.max() > 1 + 1e-3:
        lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
        raise GliomatchError(
            f"{name} map {path}: not a probability map (values in [{lo:.3g}, {hi:.3g}]; they "
            "must lie in [0, 1])"
        )
    return np.clip(data, 0, 1)
