"""Synthetic patients for the demo and the tests.

A synthetic patient is the atlas seen through a random smooth deformation and a random affine
(its own oblique grid and affine), with a tumor simulated in the atlas from hidden parameters:

* ``t1.nii.gz``: the atlas T1 warped into patient space, with a plausible tumor signal
  (hypointense core, slightly hypointense edema);
* ``seg.nii.gz``: a BraTS 2021 label map (1 necrosis, 2 edema, 4 enhancing) from the density
  thresholded at 0.2 / 0.6 with smooth boundary noise;
* ``density_true.nii.gz``: the hidden density in patient space;
* ``truth.json``: the hidden parameters and the transform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from gliomatch.atlas import Atlas
from gliomatch.errors import GliomatchError
from gliomatch.masks import threshold
from gliomatch.solver import get_model

__all__ = ["SyntheticPatient", "make_patient"]


@dataclass
class SyntheticPatient:
    folder: Path
    t1: Path
    seg: Path
    density_true: Path
    truth: dict


def _patient_to_atlas(
    shape, affine_p, rng, max_rot_deg, max_shift_mm, scale_range, warp_mm, atlas: Atlas
):
    """World-coordinate map patient -> atlas on the patient grid: affine + smooth warp."""
    rot = Rotation.from_rotvec(rng.normal(size=3) * np.deg2rad(max_rot_deg) / 2).as_matrix()
    scale = rng.uniform(*scale_range, size=3)
    shift = rng.uniform(-max_shift_mm, max_shift_mm, size=3)
    centre = atlas.voxel_to_world((np.asarray(atlas.shape) - 1) / 2)
    lin = rot @ np.diag(scale)
    idx = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world_p = affine_p[:3, :3] @ idx + affine_p[:3, 3:4]
    world_a = lin @ (world_p - centre[:, None]) + centre[:, None] + shift[:, None]
    # smooth random displacement, amplitude ~warp_mm
    sigma = 20.0 / atlas.spacing
    disp = []
    for _ in range(3):
        f = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
        f *= warp_mm / (np.abs(f).max() + 1e-12)
        disp.append(f.reshape(-1))
    world_a = world_a + np.asarray(disp)
    inv_a = np.linalg.inv(atlas.affine)
    vox_a = inv_a[:3, :3] @ world_a + inv_a[:3, 3:4]
    transform = {
        "rotation": rot.tolist(),
        "scale": scale.tolist(),
        "shift_mm": shift.tolist(),
        "warp_mm": warp_mm,
    }
    return vox_a.reshape((3, *shape)), transform


def make_patient(
    atlas: Atlas,
    folder,
    *,
    theta: dict | None = None,
    density: np.ndarray | None = None,
    seed: int = 0,
    max_rot_deg: float = 8.0,
    max_shift_mm: float = 8.0,
    scale_range=(0.92, 1.08),
    warp_mm: float = 3.0,
    boundary_noise: float = 0.04,
) -> SyntheticPatient:
    """Write a synthetic patient to ``folder``.

    Pass either ``theta`` (dict with x, y, z, dw, rho, t_end; simulated here) or ``density``
    (an atlas-space density, e.g. a database tumor, with its theta for the record).
    """

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if density is None:
        if theta is None:
            raise GliomatchError("make_patient needs theta or density")
        model = get_model()
        sim = model.simulate(
            model.domain_of(atlas), (theta["x"], theta["y"], theta["z"]), dw=theta["dw"],
            rho=theta["rho"], times=[theta["t_end"]],
        )  # fmt: skip
        density = sim.densities[0]
    density = np.asarray(density, dtype=np.float32)
    if density.shape != atlas.shape:
        raise GliomatchError(f"density {density.shape} is not on the atlas grid {atlas.shape}")

    # the patient's own grid: same size, oblique, voxel 1.05x the atlas's
    shape = atlas.shape
    rot = Rotation.from_rotvec(rng.normal(size=3) * np.deg2rad(6)).as_matrix()
    lin = rot @ np.diag([atlas.spacing * 1.05] * 3)
    centre = atlas.voxel_to_world((np.asarray(shape) - 1) / 2)
    affine_p = np.eye(4)
    affine_p[:3, :3] = lin
    affine_p[:3, 3] = centre - lin @ ((np.asarray(shape) - 1) / 2) + rng.uniform(-5, 5, 3)

    coords, transform = _patient_to_atlas(
        shape, affine_p, rng, max_rot_deg, max_shift_mm, scale_range, warp_mm, atlas
    )

    def sample(arr, order=1):
        return ndimage.map_coordinates(arr, coords, order=order, mode="constant", cval=0.0)

    u = sample(density).astype(np.float32)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    noise *= boundary_noise / (noise.std() + 1e-12)
    noisy = u + noise * (u > 0.05)
    flair, core = threshold(noisy)
    necrosis = noisy >= 0.97
    seg = np.zeros(shape, np.uint8)
    seg[flair] = 2
    seg[core] = 4
    seg[necrosis] = 1
    if not flair.any():
        raise GliomatchError("the synthetic tumor is empty after thresholding")
    t1 = sample(atlas.t1)
    t1 = t1 * np.where(core, 0.55, np.where(flair, 0.85, 1.0))
    t1 += rng.normal(scale=0.01, size=shape) * (t1 > 0)
    t1 = (np.clip(t1, 0, None) * 1000).astype(np.float32)

    def save(arr, name):
        img = nib.Nifti1Image(arr, affine_p)
        img.header.set_xyzt_units("mm")
        p = folder / name
        nib.save(img, str(p))
        return p

    paths = (save(t1, "t1.nii.gz"), save(seg, "seg.nii.gz"), save(u, "density_true.nii.gz"))
    truth = {
        "theta": theta,
        "transform": transform,
        "seed": seed,
        "flair_cm3": float(flair.sum() * abs(np.linalg.det(lin)) / 1000),
        "t1gd_cm3": float(core.sum() * abs(np.linalg.det(lin)) / 1000),
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2))
    return SyntheticPatient(folder, *paths, truth)
