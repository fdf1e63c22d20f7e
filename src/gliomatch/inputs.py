"""Reading and checking patient inputs: anatomy, BraTS label maps, binary masks.

BraTS label conventions (whole tumor = FLAIR hyperintensity, tumor core = T1Gd):

===========  =====================  ==========  ===========================
convention   labels                 FLAIR       T1Gd (tumor core)
===========  =====================  ==========  ===========================
brats2021    1 NCR, 2 ED, 4 ET      1, 2, 4     1, 4
brats2023    1 NETC, 2 SNFH, 3 ET   1, 2, 3     1, 3
===========  =====================  ==========  ===========================

``auto`` picks 2021 when label 4 is present, 2023 when label 3 is present (both: an error).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from gliomatch.errors import GliomatchError

__all__ = ["LABEL_SCHEMES", "binary_mask", "load_nifti", "masks_from_labels", "on_grid"]

LABEL_SCHEMES = {
    "brats2021": {"flair": (1, 2, 4), "t1gd": (1, 4)},
    "brats2023": {"flair": (1, 2, 3), "t1gd": (1, 3)},
}
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
            f"{diff:.3g} mm); resampled onto the {ref_name} grid",
            stacklevel=2,
        )
        mapping = np.linalg.inv(img.affine) @ ref.affine
        return ndimage.affine_transform(
            data,
            mapping[:3, :3],
            offset=mapping[:3, 3],
            output_shape=ref.shape,
            order=0 if label else 1,
            mode="constant",
            cval=0,
        )
    raise GliomatchError(
        f"{name} ({img.get_filename()}) is on another grid than {ref_name} "
        f"({ref.get_filename()}): shapes {data.shape} vs {ref.shape}, max affine difference "
        f"{diff:.3g} mm; segmentations must be on the grid of the anatomical scan"
    )


def masks_from_labels(labels: np.ndarray, scheme: str = "auto", *, name: str = "segmentation"):
    """(FLAIR, T1Gd) boolean masks from a BraTS label map; returns ``(flair, t1gd, scheme)``."""
    lab = np.asarray(labels)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise GliomatchError(f"{name}: labels must be integers")
    values = set(np.unique(lab).astype(int).tolist())
    if scheme == "auto":
        if 4 in values and 3 in values:
            raise GliomatchError(
                f"{name}: holds both labels 3 and 4; pass --labels brats2021 or brats2023"
            )
        scheme = "brats2023" if 3 in values else "brats2021"
    if scheme not in LABEL_SCHEMES:
        raise GliomatchError(
            f"unknown label scheme {scheme!r}; use auto, {', '.join(LABEL_SCHEMES)}"
        )
    allowed = {0, *LABEL_SCHEMES[scheme]["flair"]}
    unknown = sorted(values - allowed)
    if unknown:
        raise GliomatchError(
            f"{name}: unexpected labels {unknown} for {scheme} (expected {sorted(allowed)})"
        )
    flair = np.isin(lab, LABEL_SCHEMES[scheme]["flair"])
    t1gd = np.isin(lab, LABEL_SCHEMES[scheme]["t1gd"])
    if not flair.any():
        raise GliomatchError(f"{name}: the tumor is empty (no tumor label anywhere)")
    return flair, t1gd, scheme


def binary_mask(img: nib.Nifti1Image, name: str) -> np.ndarray:
    data = np.asarray(img.dataobj)
    values = np.unique(data)
    if not np.all(np.isin(values, (0, 1))):
        raise GliomatchError(
            f"{name} ({img.get_filename()}): not a binary mask (values "
            f"{', '.join(f'{v:g}' for v in values[:6])}); for a BraTS label map use --seg"
        )
    return data.astype(bool)
