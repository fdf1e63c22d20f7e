"""``gliomatch db info``: what a database holds, as a dictionary."""

from __future__ import annotations

import numpy as np

from gliomatch.database.storage import Database

__all__ = ["UNITS", "describe", "histograms"]

#: Table columns summarised by :func:`describe`, with their units.
UNITS = {"dw": "mm^2/d", "rho": "1/d", "t_end": "d", "flair_cm3": "cm^3", "t1gd_cm3": "cm^3"}


def describe(db: Database) -> dict:
    """Counts, grid, atlas, disk size, parameter ranges (with units), seed and size filter."""
    p, m = db.params, db.manifest
    return {
        "path": str(db.path),
        "tumors": len(db),
        "resolution": db.resolution,
        "atlas": m["atlas"]["source"],
        "counts": m["counts"],
        "disk_bytes": m["disk_bytes"],
        "bytes_per_tumor": m["disk_bytes"] / max(len(db), 1),
        "ranges": {c: [float(p[c].min()), float(p[c].max())] for c in UNITS},
        "units": UNITS,
        "seed": m["sampling"]["seed"],
        "size_filter": m["size_filter"],
    }


def histograms(db: Database, bins: int = 20) -> dict[str, np.ndarray]:
    """Counts per bin over each column's range (see :data:`UNITS`)."""
    out = {}
    for col in UNITS:
        lo, hi = float(db.params[col].min()), float(db.params[col].max())
        out[col] = np.histogram(db.params[col], bins=bins, range=(lo, hi if hi > lo else lo + 1))[0]
    return out
