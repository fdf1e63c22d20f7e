"""The discrete domain of the Fisher–Kolmogorov solver: tissue mask and face diffusivities.

The grid is padded by one voxel of non-tissue on every side, so stencils need no bounds checks
and the array border is a no-flux boundary like any other tissue/non-tissue face.

Diffusivity per cell (relative to D_w): ``p_WM + p_GM / ratio`` in tissue, 0 elsewhere. The
coefficient of the face between two cells is the harmonic mean of their diffusivities, which is
0 whenever one side is not tissue: no flux into CSF or out of the brain, so pure diffusion
conserves mass exactly (up to round-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from gliomatch.atlas import TISSUE_THRESHOLD, Atlas
from gliomatch.errors import GliomatchError

__all__ = ["Domain"]


def _harmonic_faces(d: np.ndarray, axis: int) -> np.ndarray:
    """Face coefficients along ``axis``; entry ``[i]`` is the face between cells ``i-1``, ``i``."""
    lo = np.take(d, np.arange(d.shape[axis] - 1), axis=axis)
    hi = np.take(d, np.arange(1, d.shape[axis]), axis=axis)
    s = lo + hi
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where((lo > 0) & (hi > 0), 2.0 * lo * hi / s, 0.0)
    pad = [(0, 0)] * 3
    pad[axis] = (1, 0)
    return np.pad(h, pad).astype(np.float32)


@dataclass(frozen=True, eq=False)
class Domain:
    """Padded tissue mask and face diffusivities (relative to D_w) on an isotropic grid.

    Attributes
    ----------
    tissue : ndarray of bool, shape (R0 + 2, R1 + 2, R2 + 2)
    fx, fy, fz : ndarray of float32, same shape
        ``fx[i, j, k]`` is the coefficient of the face between ``(i-1, j, k)`` and ``(i, j, k)``.
    spacing : float
        Voxel side (mm).
    affine : ndarray (4, 4)
        Affine of the *unpadded* grid.
    """

    tissue: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    fz: np.ndarray
    spacing: float
    affine: np.ndarray
    ratio: float

    @cached_property
    def span(self) -> np.ndarray:
        """Per padded row ``(i, j)``: ``[k0, k1)`` covering its tissue (k0 = k1 if none)."""
        t = self.tissue
        has = t.any(axis=2)
        first = np.argmax(t, axis=2)
        last = t.shape[2] - np.argmax(t[:, :, ::-1], axis=2)
        span = np.zeros(t.shape[:2] + (2,), dtype=np.int64)
        span[..., 0] = np.where(has, first, 0)
        span[..., 1] = np.where(has, last, 0)
        return span

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the unpadded grid."""
        return tuple(int(s) - 2 for s in self.tissue.shape)

    @property
    def max_face(self) -> float:
        return float(max(self.fx.max(), self.fy.max(), self.fz.max()))

    @classmethod
    def from_maps(cls, wm, gm, spacing: float, *, ratio: float = 10.0, affine=None) -> Domain:
        """Domain from WM and GM probability maps on an isotropic grid of side ``spacing`` mm."""
        wm = np.asarray(wm, dtype=np.float64)
        gm = np.asarray(gm, dtype=np.float64)
        if wm.ndim != 3 or wm.shape != gm.shape:
            raise GliomatchError(
                f"WM and GM maps must be 3-D arrays of one shape, got {wm.shape} and {gm.shape}"
            )
        if not (np.all(np.isfinite(wm)) and np.all(np.isfinite(gm))):
            raise GliomatchError("WM/GM maps contain NaN or infinite values")
        if not np.isfinite(ratio) or ratio <= 0:
            raise GliomatchError(f"WM/GM diffusivity ratio must be > 0, got {ratio}")
        if not np.isfinite(spacing) or spacing <= 0:
            raise GliomatchError(f"voxel spacing must be > 0 mm, got {spacing}")
        tissue = (wm + gm) >= TISSUE_THRESHOLD
        d = np.where(tissue, wm + gm / ratio, 0.0)
        d = np.pad(d, 1)
        if affine is None:
            affine = np.diag([spacing, spacing, spacing, 1.0])
        return cls(
            tissue=np.pad(tissue, 1),
            fx=_harmonic_faces(d, 0),
            fy=_harmonic_faces(d, 1),
            fz=_harmonic_faces(d, 2),
            spacing=float(spacing),
            affine=np.asarray(affine, dtype=np.float64),
            ratio=float(ratio),
        )

    @classmethod
    def from_atlas(cls, atlas: Atlas, *, ratio: float = 10.0) -> Domain:
        return cls.from_maps(atlas.wm, atlas.gm, atlas.spacing, ratio=ratio, affine=atlas.affine)
