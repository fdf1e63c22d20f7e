"""Labels that come free with every simulated tumor, for the multitask embedding.

Each task is a small classification derived from the stored parameters and volumes:

=============  =====================================================================
hemisphere     seed x < 0 mm: left, else right (RAS world coordinates; MNI midline)
frontrear      seed y >= -20 mm: front, else rear (roughly the central sulcus)
upperlower     seed z >= 10 mm: upper, else lower
region         coarse anatomical region of the seed (see :func:`seed_region`)
size           tercile of the linear tumor size (FLAIR equivalent-sphere diameter, mm)
infiltration   tercile of the infiltration length sqrt(D_w / rho) (mm)
growth         tercile of the growth stage rho * T_end (dimensionless)
=============  =====================================================================

Terciles are computed over the whole database, so a tumor's label is a property of the database
(the same for training, held-out evaluation and any model trained on it). ``size_mm`` (the linear
size) is also returned as a regression target for K-nearest-neighbour RMSE.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gliomatch.errors import GliomatchError
from gliomatch.learn.tasks import REGIONS, TASKS

__all__ = ["REGIONS", "TASKS", "linear_size_mm", "seed_region", "task_labels"]


def seed_region(x, y, z) -> np.ndarray:
    """Coarse region index (into :data:`REGIONS`) of MNI coordinates in mm.

    A geometric partition, not a parcellation (no labelled atlas ships offline): infratentorial
    z < -25 and y < -40; deep (basal ganglia, thalamus, insula) |x| < 30, -30 <= y <= 20,
    -10 <= z <= 20; occipital y < -70; temporal z < 0 and y <= 20; frontal y >= -20; parietal
    the rest (-70 <= y < -20, z >= 0).
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    out = np.full(np.broadcast(x, y, z).shape, REGIONS.index("parietal"), dtype=np.int64)
    rules = [  # later rules win
        ("frontal", y >= -20),
        ("temporal", (z < 0) & (y <= 20)),
        ("occipital", y < -70),
        ("deep", (np.abs(x) < 30) & (y >= -30) & (y <= 20) & (z >= -10) & (z <= 20)),
        ("infratentorial", (z < -25) & (y < -40)),
    ]
    for name, where in rules:
        out[where] = REGIONS.index(name)
    return out


def linear_size_mm(volume_cm3) -> np.ndarray:
    """Diameter (mm) of the sphere with the given volume (cm^3)."""
    v = np.asarray(volume_cm3, dtype=float)
    return 10.0 * np.cbrt(6.0 * v / np.pi)


def _terciles(values: np.ndarray, edges) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), values, side="right").astype(np.int64)


def task_labels(params: pd.DataFrame, edges: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Labels of every row of a database parameter table.

    Returns ``(labels, edges)``: one integer column per task of :data:`TASKS` plus ``size_mm``;
    ``edges`` holds the tercile boundaries (computed from ``params`` unless given, so held-out
    tumors can be labelled with the database's boundaries).
    """
    need = {"x_mm", "y_mm", "z_mm", "dw", "rho", "t_end", "flair_cm3"}
    missing = need - set(params.columns)
    if missing:
        raise GliomatchError(f"parameter table lacks columns {sorted(missing)}")
    if len(params) == 0:
        raise GliomatchError("no tumors to label")
    size = linear_size_mm(params["flair_cm3"].to_numpy())
    infiltration = np.sqrt(params["dw"].to_numpy() / params["rho"].to_numpy())
    growth = params["rho"].to_numpy() * params["t_end"].to_numpy()
    continuous = {"size": size, "infiltration": infiltration, "growth": growth}
    if edges is None:
        edges = {k: np.quantile(v, [1 / 3, 2 / 3]).tolist() for k, v in continuous.items()}
    x, y, z = (params[c].to_numpy() for c in ("x_mm", "y_mm", "z_mm"))
    labels = pd.DataFrame(
        {
            "hemisphere": (x >= 0).astype(np.int64),
            "frontrear": (y >= -20).astype(np.int64),
            "upperlower": (z >= 10).astype(np.int64),
            "region": seed_region(x, y, z),
            **{k: _terciles(v, edges[k]) for k, v in continuous.items()},
            "size_mm": size,
        },
        index=params.index,
    )
    return labels, edges
