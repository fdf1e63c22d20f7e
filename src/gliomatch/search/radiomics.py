"""The papers' "ultimate compression": pyradiomics shape features + centre of mass.

Query (as in the papers): the ``candidates`` (1,000) database tumors whose FLAIR centre of mass
is nearest to the query's, then the smallest L2 distance over the standardized shape features
of both masks.

Features (pyradiomics ``shape``, 3-D, on each of the FLAIR and T1Gd masks): MeshVolume,
VoxelVolume, SurfaceArea, SurfaceVolumeRatio, Sphericity, Maximum3DDiameter,
Maximum2DDiameterSlice, Maximum2DDiameterColumn, Maximum2DDiameterRow, MajorAxisLength,
MinorAxisLength, LeastAxisLength, Elongation, Flatness — 14 per mask, 28 in all. An empty mask
has all features 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.database import Database
from gliomatch.errors import require_extra
from gliomatch.files import worker_pool
from gliomatch.progress import report
from gliomatch.search.base import Query, Strategy, register_strategy, top_k

__all__ = ["FEATURES", "RadiomicsStrategy", "database_features", "shape_features"]

FEATURES = (
    "MeshVolume",
    "VoxelVolume",
    "SurfaceArea",
    "SurfaceVolumeRatio",
    "Sphericity",
    "Maximum3DDiameter",
    "Maximum2DDiameterSlice",
    "Maximum2DDiameterColumn",
    "Maximum2DDiameterRow",
    "MajorAxisLength",
    "MinorAxisLength",
    "LeastAxisLength",
    "Elongation",
    "Flatness",
)


def shape_features(mask: np.ndarray, spacing: float) -> dict:
    """pyradiomics 3-D shape features of a boolean mask (cropped to its box, padded by 1)."""
    import SimpleITK as sitk
    from radiomics import shape

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    if not mask.any():
        return dict.fromkeys(FEATURES, 0.0)
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = np.pad(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 1).astype(np.uint8)
    # SimpleITK arrays are (z, y, x); the voxels are isotropic, so the order does not matter
    m = sitk.GetImageFromArray(crop)
    m.SetSpacing((spacing,) * 3)
    img = sitk.GetImageFromArray(crop.astype(np.float32))
    img.CopyInformation(m)
    ext = shape.RadiomicsShape(img, m)
    ext.enableAllFeatures()
    vals = ext.execute()
    return {f: float(vals[f]) for f in FEATURES}


def _tumor_features(args):
    path, ids, spacing, affine = args

    db = Database.open(path)
    rows = []
    for i in ids:
        f, t = db.masks(int(i))
        row = {"id": int(i)}
        for name, m in (("flair", f), ("t1gd", t)):
            for k, v in shape_features(m, spacing).items():
                row[f"{name}_{k}"] = v
        com = np.argwhere(f).mean(0)
        world = affine[:3, :3] @ com + affine[:3, 3]
        row.update(com_x_mm=world[0], com_y_mm=world[1], com_z_mm=world[2])
        rows.append(row)
    return rows


def database_features(db, *, workers: int = 2, progress=None) -> pd.DataFrame:
    """Shape features and FLAIR centre of mass (mm) of every database tumor."""
    ids = np.arange(len(db))
    chunks = [c for c in np.array_split(ids, max(1, len(ids) // 50)) if len(c)]
    args = [(str(db.path), c, db.spacing_mm, db.affine) for c in chunks]
    rows, done = [], 0
    if workers <= 1:
        results = map(_tumor_features, args)
        pool = None
    else:
        pool = worker_pool(workers)
        results = pool.map(_tumor_features, args)
    try:
        for part in results:
            rows += part
            done += len(part)
            report(progress, done, len(ids), "radiomics features")
    finally:
        if pool is not None:
            pool.shutdown()
    return pd.DataFrame(rows).sort_values("id").reset_index(drop=True)


@register_strategy("radiomics")
class RadiomicsStrategy(Strategy):
    """Centre-of-mass prefilter, then L2 over standardized shape features."""

    name = "radiomics"

    def __init__(self, db, *, candidates: int = 1000, workers: int = 2, **kw):
        require_extra("radiomics", "the radiomics search strategy")
        super().__init__(db, **kw)
        self.candidates = int(candidates)
        self.workers = workers

    def _build(self, folder: Path) -> None:
        table = database_features(self.db, workers=self.workers, progress=self.progress)
        table.to_parquet(folder / "features.parquet", index=False)

    def _load(self, folder: Path) -> None:
        t = pd.read_parquet(folder / "features.parquet")
        self.cols = [c for c in t.columns if c.startswith(("flair_", "t1gd_"))]
        x = t[self.cols].to_numpy(np.float64)
        self.mean = x.mean(0)
        self.std = np.where(x.std(0) > 0, x.std(0), 1.0)
        self.x = (x - self.mean) / self.std
        self.com = t[["com_x_mm", "com_y_mm", "com_z_mm"]].to_numpy(np.float64)

    def query_features(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        spacing = self.db.spacing_mm
        feats = {}
        for name, m in (("flair", query.flair), ("t1gd", query.t1gd)):
            for k, v in shape_features(m, spacing).items():
                feats[f"{name}_{k}"] = v
        x = (np.array([feats[c] for c in self.cols]) - self.mean) / self.std
        com = np.argwhere(query.flair).mean(0)
        a = self.db.affine
        return x, a[:3, :3] @ com + a[:3, 3]

    def nearest_by_com(self, com: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(self.com - com, axis=1)
        m = min(self.candidates, len(d))
        return np.lexsort((np.arange(len(d)), d))[:m]

    def _search(self, query: Query, k: int):
        x, com = self.query_features(query)
        cand = self.nearest_by_com(com)
        dist = np.linalg.norm(self.x[cand] - x, axis=1)
        return top_k(-dist, cand, k)
