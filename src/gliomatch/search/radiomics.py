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
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from gliomatch.database import Database
from gliomatch.errors import require_extra
from gliomatch.files import worker_pool
from gliomatch.progress import report
from gliomatch.search.base import Query, Strategy, register_strategy, top_k

__all__ = [
    "FEATURES",
    "RadiomicsStrategy",
    "database_features",
    "parts_folder",
    "shape_features",
]

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


#: Tumors per part of a features computation (a part is computed, saved and resumed whole).
PART = 250
#: Bump when the features' computation changes: saved parts of another version are not used.
FEATURES_VERSION = 1


def columns() -> list[str]:
    """The features table's columns, in order."""
    return [
        "id",
        *(f"{m}_{f}" for m in ("flair", "t1gd") for f in FEATURES),
        "com_x_mm",
        "com_y_mm",
        "com_z_mm",
    ]


def parts_folder(db) -> Path:
    """Where a features computation keeps its finished parts until the index is built:
    ``index/.radiomics-parts/<fingerprint>-v<version>/`` (hidden: never read as an index).
    An interrupted `db index --strategy radiomics` resumes from them; copied to another
    machine with the same database (same fingerprint), they are used there too."""
    return db.path / "index" / ".radiomics-parts" / f"{db.fingerprint}-v{FEATURES_VERSION}"


def _read_part(path: Path, ids: np.ndarray) -> pd.DataFrame | None:
    """A saved part, or None when it is unreadable or not the features of exactly ``ids``
    (a damaged or foreign file is computed again, never trusted)."""
    try:
        t = pd.read_parquet(path)
    except Exception:  # noqa: BLE001  (any unreadable file: recompute the part)
        return None
    ok = (
        list(t.columns) == columns()
        and np.array_equal(t["id"].to_numpy(), ids)
        and np.isfinite(t.drop(columns="id").to_numpy(np.float64)).all()
    )
    return t if ok else None


def database_features(db, *, workers: int = 2, progress=None, resume: bool = True) -> pd.DataFrame:
    """Shape features and FLAIR centre of mass (mm) of every database tumor.

    Computed in parts of :data:`PART` tumors, each saved in :func:`parts_folder` as it
    finishes (``resume``: parts already there are read, not computed again); the parts are
    removed once the whole table is returned to the index build."""
    from gliomatch.files import atomic_path

    n = len(db)
    chunks = [np.arange(s, min(s + PART, n)) for s in range(0, n, PART)]
    folder = parts_folder(db)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{c[0]:07d}.parquet" for c in chunks]
    parts: dict[int, pd.DataFrame] = {}
    if resume:
        for j, (c, p) in enumerate(zip(chunks, paths, strict=True)):
            if p.is_file() and (t := _read_part(p, c)) is not None:
                parts[j] = t
    todo = [j for j in range(len(chunks)) if j not in parts]
    done = sum(len(chunks[j]) for j in parts)
    report(progress, done, n, "radiomics features")
    args = [(str(db.path), chunks[j], db.spacing_mm, db.affine) for j in todo]
    pool = worker_pool(workers) if workers > 1 and len(todo) > 1 else None
    results = pool.map(_tumor_features, args) if pool else map(_tumor_features, args)
    try:
        for j, rows in zip(todo, results, strict=True):
            t = pd.DataFrame(rows, columns=columns())
            with atomic_path(paths[j]) as tmp:
                t.to_parquet(tmp, index=False)
            parts[j] = t
            done += len(t)
            report(progress, done, n, "radiomics features")
    finally:
        if pool is not None:
            pool.shutdown()
    return pd.concat([parts[j] for j in range(len(chunks))], ignore_index=True)


def forget_parts(db) -> None:
    """Remove the saved parts of ``db``'s features (the index now holds them)."""
    shutil.rmtree(db.path / "index" / ".radiomics-parts", ignore_errors=True)


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

    def build(self) -> Strategy:
        super().build()
        forget_parts(self.db)  # the index holds the features now
        return self

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
