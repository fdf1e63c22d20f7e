"""Tissue atlas: T1 and white/grey matter/CSF probability maps on an isotropic cubic grid.

The default atlas is nilearn's bundled MNI152 2009 template (no download). A user atlas is a
folder with ``t1``, ``wm``, ``gm`` and ``csf`` NIfTI files on one grid (SRI24, for example).
Either is resampled onto an isotropic grid of ``resolution`` voxels per side, centred on the
brain, whose field of view holds the whole brain (192 mm: 1.5 mm voxels at 128^3, 3 mm at 64^3,
6 mm at 32^3). Resampled atlases are cached on disk, keyed by source and resolution.

Every array of an :class:`Atlas` lives on the grid described by ``atlas.affine`` (voxel index
to RAS+ world millimetres, nibabel convention).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine, voxel_sizes
from nibabel.processing import resample_from_to
from scipy import ndimage

from gliomatch.errors import GliomatchError
from gliomatch.files import sha256_file

__all__ = [
    "Atlas",
    "MIN_RESOLUTION",
    "TISSUE_THRESHOLD",
    "cache_dir",
    "load_atlas",
    "mni152_atlas",
    "user_atlas",
]

MIN_RESOLUTION = 8
#: A voxel is brain tissue (where tumor cells live) when P(WM) + P(GM) >= this.
TISSUE_THRESHOLD = 0.5
#: Smallest field of view (mm) of the cubic grid; 192 mm / 128 = 1.5 mm voxels.
MIN_FOV_MM = 192.0
_MAPS = ("t1", "wm", "gm", "csf")
_CACHE_VERSION = 2  # 2: entries carry the atlas checksum, verified on load


def cache_dir() -> Path:
    """Folder for cached atlases (``$GLIOMATCH_CACHE`` or ``~/.cache/gliomatch``)."""
    root = os.environ.get("GLIOMATCH_CACHE") or Path.home() / ".cache" / "gliomatch"
    return Path(root)


@dataclass(frozen=True, eq=False)
class Atlas:
    """A tissue atlas on an isotropic cubic grid.

    Attributes
    ----------
    t1, wm, gm, csf : ndarray of float32, shape (R, R, R)
        T1 intensity (scaled to [0, 1]) and tissue probabilities in [0, 1].
    affine : ndarray, shape (4, 4)
        Voxel index to world (mm) transform.
    source : str
        ``"mni152-2009"`` or ``"user:<folder>"``.
    """

    t1: np.ndarray
    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def resolution(self) -> int:
        return int(self.wm.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.wm.shape)

    @property
    def spacing(self) -> float:
        """Voxel side length in mm."""
        return float(np.linalg.norm(self.affine[:3, 0]))

    @property
    def voxel_volume_cm3(self) -> float:
        return self.spacing**3 / 1000.0

    @cached_property
    def tissue(self) -> np.ndarray:
        """Boolean mask of brain tissue (WM + GM >= 0.5): where tumor cells can live."""
        return (self.wm + self.gm) >= TISSUE_THRESHOLD

    @cached_property
    def brain(self) -> np.ndarray:
        """Boolean brain mask (WM + GM + CSF >= 0.5)."""
        return (self.wm + self.gm + self.csf) >= TISSUE_THRESHOLD

    @cached_property
    def checksum(self) -> str:
        """SHA-256 of the maps and the affine: identifies the atlas in a database manifest."""
        h = hashlib.sha256()
        for name in _MAPS:
            h.update(np.ascontiguousarray(getattr(self, name), dtype=np.float32).tobytes())
        h.update(np.asarray(self.affine, dtype=np.float64).tobytes())
        return h.hexdigest()

    def fraction_to_voxel(self, frac) -> np.ndarray:
        """Continuous voxel coordinates of a point given as fractions of the grid extent.

        ``0`` is the centre of the first voxel and ``1`` the centre of the last, per axis.
        """
        frac = np.asarray(frac, dtype=np.float64)
        return frac * (np.asarray(self.shape) - 1)

    def voxel_to_world(self, ijk) -> np.ndarray:
        return apply_affine(self.affine, np.asarray(ijk, dtype=np.float64))

    def world_to_voxel(self, xyz) -> np.ndarray:
        return apply_affine(np.linalg.inv(self.affine), np.asarray(xyz, dtype=np.float64))

    def fraction_to_world(self, frac) -> np.ndarray:
        return self.voxel_to_world(self.fraction_to_voxel(frac))

    def to_nifti(self, array: np.ndarray) -> nib.Nifti1Image:
        """Wrap an array on the atlas grid as a NIfTI image carrying the atlas affine."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GliomatchError(
                f"array of shape {array.shape} is not on the atlas grid {self.shape}"
            )
        if array.dtype == bool:
            array = array.astype(np.uint8)
        img = nib.Nifti1Image(array, self.affine)
        img.header.set_xyzt_units("mm", "sec")
        return img

    def info(self) -> dict:
        """Grid, spacing and tissue volumes (cm^3) as a plain dict."""
        v = self.voxel_volume_cm3
        return {
            "source": self.source,
            "resolution": self.resolution,
            "shape": list(self.shape),
            "spacing_mm": self.spacing,
            "field_of_view_mm": self.spacing * self.resolution,
            "affine": np.round(self.affine, 6).tolist(),
            "wm_cm3": float(self.wm.sum() * v),
            "gm_cm3": float(self.gm.sum() * v),
            "csf_cm3": float(self.csf.sum() * v),
            "tissue_cm3": float(self.tissue.sum() * v),
            "tissue_voxels": int(self.tissue.sum()),
            "checksum": self.checksum,
        }


# --------------------------------------------------------------------------- construction


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or int(resolution) != resolution:
        raise GliomatchError(f"resolution must be an integer, got {resolution!r}")
    resolution = int(resolution)
    if resolution < MIN_RESOLUTION:
        raise GliomatchError(
            f"resolution must be at least {MIN_RESOLUTION} voxels per side, got {resolution}"
        )
    return resolution


def _target_affine(brain: np.ndarray, affine: np.ndarray, resolution: int) -> np.ndarray:
    """Isotropic RAS grid of ``resolution``^3 voxels centred on the brain's bounding box."""
    idx = np.argwhere(brain)
    corners = np.array(
        [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64
    )
    lo, hi = idx.min(0).astype(float), idx.max(0).astype(float)
    pts = lo + corners * (hi - lo)
    world = apply_affine(affine, pts)
    wlo, whi = world.min(0), world.max(0)
    fov = max(MIN_FOV_MM, float((whi - wlo).max()) + 8.0)
    spacing = fov / resolution
    centre = (wlo + whi) / 2.0
    target = np.eye(4)
    target[:3, :3] *= spacing
    target[:3, 3] = centre - spacing * (resolution - 1) / 2.0
    return target


def _resample(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape):
    """Linear resampling of ``data`` onto the grid ``dst_affine``/``shape``.

    Downsampling is preceded by a Gaussian anti-aliasing filter so that a coarse voxel holds
    the partial-volume average of the fine voxels it covers.
    """
    src_spacing = voxel_sizes(src_affine)
    dst_spacing = float(voxel_sizes(dst_affine)[0])
    ratio = dst_spacing / src_spacing
    sigma = np.where(ratio > 1.0, 0.42 * ratio, 0.0)
    data = np.asarray(data, dtype=np.float32)
    if np.any(sigma > 0):
        data = ndimage.gaussian_filter(data, sigma=sigma, mode="constant")
    src = nib.Nifti1Image(data, src_affine)
    out = resample_from_to(src, (tuple(shape), dst_affine), order=1, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)


def _build(maps: dict[str, np.ndarray], affine: np.ndarray, resolution: int, source: str):
    brain = (maps["wm"] + maps["gm"] + maps["csf"]) >= TISSUE_THRESHOLD
    target = _target_affine(brain, affine, resolution)
    shape = (resolution,) * 3
    out = {k: _resample(v, affine, target, shape) for k, v in maps.items()}
    for k in ("wm", "gm", "csf"):
        np.clip(out[k], 0.0, 1.0, out=out[k])
    t1 = out["t1"]
    hi = np.percentile(t1[t1 > 0], 99.5) if np.any(t1 > 0) else 1.0
    out["t1"] = np.clip(t1 / hi, 0.0, 1.0).astype(np.float32)
    atlas = Atlas(affine=target, source=source, **out)
    if not atlas.tissue.any():
        raise GliomatchError(
            f"atlas {source} has no brain tissue at resolution {resolution} "
            "(WM + GM >= 0.5 nowhere); use a higher resolution"
        )
    return atlas


def _mni152_maps():
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    maps = {"t1": t1.get_fdata(dtype=np.float32), "wm": wm, "gm": gm, "csf": csf}
    return maps, t1.affine


def _find_map(folder: Path, name: str) -> Path:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    raise GliomatchError(
        f"user atlas {folder}: missing {name}.nii.gz (a user atlas folder holds "
        "t1, wm, gm and csf NIfTI files on one grid)"
    )


def _user_maps(folder: Path):
    if not folder.is_dir():
        raise GliomatchError(f"user atlas {folder}: not a folder")
    maps, affine, shape = {}, None, None
    for name in _MAPS:
        path = _find_map(folder, name)
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise GliomatchError(f"user atlas {path}: cannot read as NIfTI ({exc})") from exc
        data = np.squeeze(data)
        if data.ndim != 3:
            raise GliomatchError(f"user atlas {path}: expected a 3-D image, got shape {data.shape}")
        if shape is None:
            shape, affine = data.shape, img.affine
        elif data.shape != shape:
            raise GliomatchError(
                f"user atlas {path}: shape {data.shape} differs from {shape} of t1; "
                "all maps must be on one grid"
            )
        elif not np.allclose(img.affine, affine, atol=1e-3):
            raise GliomatchError(
                f"user atlas {path}: affine differs from that of t1; all maps must be on one grid"
            )
        if not np.all(np.isfinite(data)):
            raise GliomatchError(f"user atlas {path}: contains NaN or infinite values")
        if name != "t1":
            lo, hi = float(data.min()), float(data.max())
            if lo < -1e-3 or hi > 1.0 + 1e-3:
                raise GliomatchError(
                    f"user atlas {path}: probabilities must lie in [0, 1], found [{lo:g}, {hi:g}]"
                )
            if name in ("wm", "gm") and hi <= 0:
                raise GliomatchError(f"user atlas {path}: the {name.upper()} map is empty")
            data = np.clip(data, 0.0, 1.0)
        elif float(data.max()) <= float(data.min()):
            raise GliomatchError(f"user atlas {path}: the T1 image is constant")
        maps[name] = data
    return maps, affine


def _user_key(folder: Path) -> str:
    """Cache key of a user atlas: the content (SHA-256) of its four maps."""

    h = hashlib.sha256()
    for name in _MAPS:
        h.update(f"{name}:{sha256_file(_find_map(folder, name))}".encode())
    return "user-" + h.hexdigest()[:16]


def _cached(key: str, resolution: int, make, source: str, use_cache: bool) -> Atlas:
    path = cache_dir() / "atlas" / f"{key}-r{resolution}-v{_CACHE_VERSION}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                cached = Atlas(**{k: z[k] for k in (*_MAPS, "affine")}, source=source)
                if cached.checksum == str(z["checksum"]):
                    return cached
        except Exception:
            pass  # a damaged cache entry is rebuilt below
    atlas = make()
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    affine=atlas.affine,
                    checksum=np.array(atlas.checksum),
                    **{k: getattr(atlas, k) for k in _MAPS},
                )
            os.replace(tmp, path)
        except OSError:
            pass  # caching is an optimisation; an unwritable cache is not an error
    return atlas


def mni152_atlas(resolution: int = 128, *, use_cache: bool = True) -> Atlas:
    """The default atlas: nilearn's MNI152 2009 templates resampled to ``resolution``^3.

    CSF is the brain mask minus GM minus WM, clipped to [0, 1].

    Examples
    --------
    >>> atlas = mni152_atlas(32)
    >>> atlas.shape, round(atlas.spacing, 2)
    ((32, 32, 32), 6.0)
    """
    resolution = _check_resolution(resolution)

    def make():
        maps, affine = _mni152_maps()
        return _build(maps, affine, resolution, "mni152-2009")

    return _cached("mni152-2009", resolution, make, "mni152-2009", use_cache)


def user_atlas(folder, resolution: int = 128, *, use_cache: bool = True) -> Atlas:
    """A user atlas from ``folder`` (``t1``, ``wm``, ``gm``, ``csf`` ``.nii[.gz]``).

    Raises
    ------
    GliomatchError
        Missing or unreadable map, maps on different grids, probabilities outside [0, 1],
        NaNs, an empty WM or GM map.
    """
    resolution = _check_resolution(resolution)
    folder = Path(folder)
    source = f"user:{folder.resolve()}"

    def make():
        maps, affine = _user_maps(folder)
        return _build(maps, affine, resolution, source)

    key = _user_key(folder) if folder.is_dir() else "missing"
    if key == "missing":
        raise GliomatchError(f"user atlas {folder}: not a folder")
    return _cached(key, resolution, make, source, use_cache)


def load_atlas(atlas: str | os.PathLike | None = None, resolution: int = 128) -> Atlas:
    """The MNI152 atlas when ``atlas`` is None or ``"mni152"``, else a user atlas folder."""
    if atlas is None or str(atlas).lower() in ("mni152", "mni152-2009"):
        return mni152_atlas(resolution)
    return user_atlas(atlas, resolution)
